"""The aggregator loop: wake on completion or at the next deadline, claim, upload, ack or retry.

- Completion path: the last station's record script pushes the batch id onto its shard's ``ready``
  list; every aggregator blocks in BLPOP on each shard's list (one task per shard), wakes within
  milliseconds and claims that batch at once.
- Deadline path: deadlines live in each shard's ``due`` zset (Redis server time); the loop sleeps exactly
  until the earliest one (capped at ``_MAX_WAIT_S``), so a deadline that passed while no aggregator
  ran is handled as soon as one starts.
- Claims are leases with fencing tokens; only the current holder may ack or schedule a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from batchfleet import metrics
from batchfleet.aggregator.payload import build_payload
from batchfleet.aggregator.protection import UploadProtection
from batchfleet.aggregator.uploaders import Uploader
from batchfleet.errors import StopRequested
from batchfleet.heartbeat import heartbeat, process_member
from batchfleet.models import Claim, UploadPayload
from batchfleet.retry import REDIS_BACKOFF, REDIS_UNAVAILABLE, Backoff, describe, redis_problem, retry, sleep_unless_stopped
from batchfleet.settings import Settings
from batchfleet.store import BatchStore

__all__ = ["Aggregator"]

log = logging.getLogger(__name__)
_MAX_WAIT_S = 0.5
_PRUNE_EVERY_S = 5.0
_ACK_BACKOFF = Backoff(0.1, 2.0)  # the upload happened: ack again soon, within the lease


class Aggregator:
    def __init__(self, settings: Settings, store: BatchStore, uploader: Uploader, *, name: str = "aggregator") -> None:
        self.settings = settings
        self.store = store
        self.uploader = uploader
        self.name = name
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self.uploaded = 0
        self._pruned_at = 0.0
        self._ready = asyncio.Event()
        self._layout_checked = False  # set by a shard's watcher when one of its batches completed
        wait = settings.upload_wait()
        self.protection = UploadProtection(store, wait[0] if wait is not None else 0)  # used only with an upload WAIT

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        log.info("%s watching completions and deadlines; uploading to %s", self.name, self.uploader.describe())
        beating = asyncio.Event()
        beat = asyncio.create_task(heartbeat(self.store, process_member("aggregator"), self._info, beating))
        watchers = [asyncio.create_task(self._watch_ready(shard, stop), name=f"ready:{shard}") for shard in self.store.shards]
        try:
            while not stop.is_set():
                await retry(self._step, what=self.name, stop=stop)
        except StopRequested:
            pass
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self._drain()
            beating.set()
            await beat

    def _info(self) -> dict[str, Any]:
        doing = f"uploading {len(self._inflight)}" if self._inflight else "waiting"
        return {
            "doing": doing,
            "inflight": sorted(self._inflight)[:10],
            "uploaded": self.uploaded,
            "target": self.uploader.describe(),
            **self.protection.info(),
        }

    async def _drain(self) -> None:
        """Finish uploads in flight within the grace period; the rest are cancelled, and their leases
        expire so that another aggregator takes them over (same body, same Idempotency-Key)."""
        if not self._inflight:
            return
        grace_s = self.settings.worker_grace_s
        log.info("%s finishing %d upload(s) in flight (up to %gs)", self.name, len(self._inflight), grace_s)
        tasks = list(self._inflight.values())
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        if pending:
            log.warning("%s: %d upload(s) not finished within %gs; their leases will expire", self.name, len(pending), grace_s)
            for task in pending:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _housekeeping(self) -> None:
        """Every so often, drop index entries of batches whose keys expired after retention."""
        now = time.monotonic()
        if now - self._pruned_at < _PRUNE_EVERY_S:
            return
        self._pruned_at = now
        dropped = await self.store.prune_batch_index()
        if dropped:
            log.debug("pruned %d expired batch(es) from the index", dropped)

    async def _step(self) -> None:
        if not self._layout_checked:
            await self.store.check_layout()  # LayoutError ends the aggregator: another shard count is stored
            self._layout_checked = True
        await self._housekeeping()
        limit = self.settings.aggregator_concurrency
        now_ms = await self.store.server_time_ms()
        due = [b for b in await self.store.due_batches(now_ms, limit * 2) if b not in self._inflight]
        room = limit - len(self._inflight)
        for batch_id in due[: max(room, 0)]:
            self._start(batch_id)
        if due and room > 0:
            await asyncio.sleep(0)  # let the claims run before looking again
            return
        if room <= 0:
            await asyncio.wait(self._inflight.values(), return_when=asyncio.FIRST_COMPLETED, timeout=_MAX_WAIT_S)
            return
        await self._wait_for_work(now_ms)

    def _start(self, batch_id: str) -> None:
        task = asyncio.create_task(self._handle(batch_id), name=f"upload:{batch_id}")
        self._inflight[batch_id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._inflight = {b: t for b, t in self._inflight.items() if t is not task}

    async def _watch_ready(self, shard: int, stop: asyncio.Event) -> None:
        """Block on one shard's wake-up list (a BLPOP over several shards would be cross-slot) and
        wake the loop when a batch of that shard completes."""
        failures = 0
        while not stop.is_set():
            try:
                ready = await self.store.wait_ready(shard, _MAX_WAIT_S)
                if ready is not None:
                    # a batch that just completed: claim it now, not after another look at the due sets
                    # (the claim script checks that it is due; another aggregator may get it first)
                    if ready not in self._inflight and len(self._inflight) < self.settings.aggregator_concurrency:
                        self._start(ready)
                    self._ready.set()
                failures = 0
            except REDIS_UNAVAILABLE:  # the main loop logs the outage
                failures += 1
                with contextlib.suppress(StopRequested):
                    await sleep_unless_stopped(REDIS_BACKOFF.delay_s(failures), stop)

    async def _wait_for_work(self, now_ms: int) -> None:
        next_ms = await self.store.next_due_ms()
        wait_s = _MAX_WAIT_S if next_ms is None else min(max((next_ms - now_ms) / 1000, 0.0), _MAX_WAIT_S)
        if wait_s > 0.001:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_s)
            self._ready.clear()
        elif self._inflight:
            await asyncio.sleep(0.002)  # what is due is being claimed by our own tasks

    # -- one batch ---------------------------------------------------------------------------
    async def _handle(self, batch_id: str) -> None:
        try:
            claim = await self.store.claim(batch_id, int(self.settings.lease_s * 1000))
            if claim is None:
                return
            self._log_finalized(claim)
            await self._upload(claim)
        except REDIS_UNAVAILABLE as exc:
            level = logging.WARNING if redis_problem(exc) == "unavailable" else logging.ERROR
            log.log(level, "batch %s: redis failed during upload handling (%s); its lease will expire", batch_id, describe(exc))
        except Exception:
            log.exception("batch %s: unexpected error; its lease will expire and it will be retried", batch_id)

    def _log_finalized(self, claim: Claim) -> None:
        if not claim.first_claim:
            return
        metrics.BATCHES_FINALIZED.labels(claim.topic, claim.reason).inc()
        extra = {"batch_id": claim.batch_id, "topic": claim.topic}
        done, expected = len(claim.outcomes), claim.expected
        if claim.reason == "complete":
            log.info("batch %s: all %d stations done, uploading", claim.batch_id, expected, extra=extra)
        elif claim.reason == "quorum":
            log.info("batch %s: quorum reached with %d/%d stations done, uploading", claim.batch_id, done, expected, extra=extra)
        else:
            timeout_s = int(claim.meta.get("timeout_ms", "0")) / 1000
            log.warning(
                "batch %s: %s (%gs) reached with %d/%d stations done, forcing upload",
                claim.batch_id,
                claim.reason,
                timeout_s,
                done,
                expected,
                extra=extra,
            )

    async def _upload(self, claim: Claim) -> None:
        payload = build_payload(claim)
        body = await self._frozen_body(claim, payload.model_dump_json().encode())
        if body is None:
            return
        retention_s = int(claim.meta.get("retention_s", self.settings.retention_s))
        started = time.perf_counter()
        extra = {"batch_id": claim.batch_id, "topic": claim.topic}
        try:
            await asyncio.wait_for(self.uploader.upload(claim.batch_id, body), timeout=self.settings.upload_timeout_s)
        except Exception as exc:
            await self._failed(claim, f"{type(exc).__name__}: {exc}")
            return
        upload_ms = (time.perf_counter() - started) * 1000
        s = payload.summary
        counts = {"ok": s.ok, "failed": s.failed, "empty": s.empty, "missing": s.missing}
        acked_ms = await self._ack(claim, retention_s, upload_ms, counts)
        if acked_ms is not None:
            self.uploaded += 1
            self._observe_upload(claim, payload, upload_ms, acked_ms)
            log.info(
                "batch %s uploaded (%s): ok=%d failed=%d empty=%d missing=%d in %.1fms",
                claim.batch_id,
                claim.reason,
                s.ok,
                s.failed,
                s.empty,
                s.missing,
                upload_ms,
                extra=extra,
            )
        else:
            log.warning("batch %s: lease was taken over during upload; the new owner acks it", claim.batch_id, extra=extra)

    async def _frozen_body(self, claim: Claim, built: bytes) -> bytes | None:
        """The body to upload: frozen once per batch, so every attempt by any aggregator sends the same
        bytes.  With an upload WAIT (Sentinel, or BATCHFLEET_UPLOAD_WAIT_REPLICAS) the body is only
        sent once that many replicas hold it: a failover can then not lose it and let the next owner
        freeze a different one.  None: do not upload now (logged)."""
        extra = {"batch_id": claim.batch_id, "topic": claim.topic}
        wait = self.settings.upload_wait()
        if wait is None:
            body = claim.payload or await self.store.freeze_payload(claim, built)
        else:
            body = await self._frozen_on_replicas(claim, built, wait[1])
        if body is None:
            log.warning(
                "batch %s: lease taken over before the upload started; leaving it to the new owner", claim.batch_id, extra=extra
            )
        return body or None  # b"": held back until enough replicas hold it

    async def _frozen_on_replicas(self, claim: Claim, built: bytes, timeout_ms: int) -> bytes | None:
        """freeze + WAIT until the replicas that must hold the body do (the configured count, or fewer when
        fewer could be promoted: aggregator/protection.py), for up to half the lease; then give up this
        attempt (b"" -- the lease runs out and the batch is claimed again)."""
        protection = self.protection
        give_up_at = time.monotonic() + self.settings.lease_s / 2
        tries = 0
        while True:
            replicas = await protection.needed(claim.batch_id, fresh=tries > 0)
            body, acked = await self.store.freeze_payload_replicated(claim, built, replicas, timeout_ms)
            tries += 1
            if body is not None and acked >= replicas:
                protection.sent(claim.batch_id, claim.topic, replicas)
            if body is None or acked >= replicas:
                return body
            if time.monotonic() >= give_up_at:
                metrics.UPLOAD_UNREPLICATED.labels(claim.topic).inc()
                log.warning(
                    "batch %s: its upload body is on %d of %d replica(s) after %d WAIT(s) of %d ms; not uploading "
                    "(a failover could lose the body and another aggregator upload a different one); "
                    "retried when the lease runs out",
                    claim.batch_id,
                    acked,
                    replicas,
                    tries,
                    timeout_ms,
                    extra={"batch_id": claim.batch_id, "topic": claim.topic},
                )
                return b""
            await asyncio.sleep(_ACK_BACKOFF.delay_s(tries))

    async def _ack(self, claim: Claim, retention_s: int, upload_ms: float, counts: dict[str, int]) -> int | None:
        """Ack with patience: the upload happened, so a Redis blip must not cause a repeat upload.
        Retries until the lease would have run out; after that another aggregator re-uploads
        (the same body, the same Idempotency-Key)."""
        return await retry(
            lambda: self.store.ack_upload(
                claim, retention_s=retention_s, upload_ms=upload_ms, uploaded_by=self.name, counts=counts
            ),
            what=f"batch {claim.batch_id}: uploaded, but the ack failed",
            backoff=_ACK_BACKOFF,
            give_up_after_s=self.settings.lease_s,
        )

    @staticmethod
    def _observe_upload(claim: Claim, payload: UploadPayload, upload_ms: float, acked_ms: int) -> None:
        topic, s = claim.topic, payload.summary
        metrics.BATCHES_UPLOADED.labels(topic, claim.reason).inc()
        metrics.UPLOAD_SECONDS.labels(topic).observe(upload_ms / 1000)
        for outcome, count in (("ok", s.ok), ("failed", s.failed), ("empty", s.empty), ("missing", s.missing)):
            metrics.STATIONS_UPLOADED.labels(topic, outcome).inc(count)
        metrics.BATCH_LATENCY.labels(topic).observe(max(acked_ms - int(claim.meta["created_ms"]), 0) / 1000)
        finalized = int(claim.meta.get("finalized_ms", claim.now_ms))
        metrics.FINALIZE_TO_UPLOAD.labels(topic, claim.reason).observe(max(acked_ms - finalized, 0) / 1000)

    def _backoff_ms(self, failures: int) -> int:
        """The wait before the next upload attempt (kept in Redis, so it survives restarts)."""
        backoff = Backoff(self.settings.upload_backoff_base_s, self.settings.upload_backoff_max_s)
        return int(backoff.delay_s(failures) * 1000)

    async def _failed(self, claim: Claim, error: str) -> None:
        failures = int(claim.meta.get("upload_failures", "0")) + 1
        kind, failures = await self.store.fail_upload(
            claim,
            retry_delay_ms=self._backoff_ms(failures),
            max_attempts=self.settings.upload_max_attempts,
            error=error,
        )
        extra = {"batch_id": claim.batch_id, "topic": claim.topic}
        metrics.UPLOAD_FAILURES.labels(claim.topic).inc()
        if kind == "dead":
            metrics.BATCHES_DEAD.labels(claim.topic).inc()
            log.error(
                "batch %s: upload failed %d times, moved to the dead-letter set: %s", claim.batch_id, failures, error, extra=extra
            )
        elif kind == "retry":
            log.warning("batch %s: upload attempt %d failed, will retry: %s", claim.batch_id, failures, error, extra=extra)
