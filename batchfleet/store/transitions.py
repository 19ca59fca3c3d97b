"""The state transitions: one method per Lua script, plus the reads the services' loops need.

Ingest (dispatcher), recording (workers) and finalize/upload (aggregator).  Every script reply is
checked against the kinds its contract documents (:func:`~batchfleet.store.scripts.reply_kind`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from batchfleet.errors import FencedOffsetError, StaleOffsetError, StoreError
from batchfleet.keys import Keys, message_id_for, offset_field
from batchfleet.models import BatchSpec, Claim, Outcome, QuarantineEntry, RecordedOutcomes, RecordResult
from batchfleet.store.base import StoreBase, aw, pairs, text
from batchfleet.store.scripts import RATE_OUTCOMES, reply_kind

__all__ = ["GROUP_JOB", "STATION_JOB", "Expected", "Transitions", "group_job_prefix", "station_job", "station_job_prefix"]

log = logging.getLogger(__name__)

Expected = Mapping[str, int | None]
"""What a dispatcher believes Redis holds: the next offset of each ``TOPIC:PARTITION`` field, None
when nothing is stored.  Ingest without it (tools, tests) is not fenced."""


def _expected_arg(expected: Expected | None, name: str) -> str:
    if expected is None:
        return "*"
    value = expected.get(name)
    return "" if value is None else str(value)


def _fenced(name: str, expected: Expected | None, stored: Any) -> FencedOffsetError:
    return FencedOffsetError(name, (expected or {}).get(name), None if stored is None else int(stored))


_RECORD_KINDS = ("complete", "quorum", "recorded", "unchanged")

STATION_JOB = "run_station"  # the arq function name of a one-station job
GROUP_JOB = "run_group"  # the arq function name of a job that carries a group of stations of one batch
_JOB_EXPIRE_EXTRA_MS = 60_000  # a job not started by deadline + this is dropped by arq unrun


_DEADLINE_TAIL = b"0]}"


def _job(function: str, args: list[Any], enqueue_ms: int, job_try: int | None = None) -> bytes:
    """An arq job as arq's own enqueue_job writes it (JSON); ``job_try``: the attempt arq starts it at."""
    return orjson.dumps({"t": job_try, "f": function, "et": enqueue_ms, "k": {}, "a": args})


def group_job_prefix(stations: Mapping[str, list[dict[str, Any]]], budget_ms: int, enqueue_ms: int) -> bytes:
    """A group job (arq JSON) up to its deadline value, which create_batch.lua appends in Redis time.
    The job id ``{BATCH}#N`` names the batch; the arguments ``[{station: records, ...}, budget_ms,
    deadline_ms]`` carry everything the worker needs to run the group's stations without reading Redis
    first (positional: keyword names would cost bytes per queued job)."""
    return _job(GROUP_JOB, [stations, budget_ms, 0], enqueue_ms)[: -len(_DEADLINE_TAIL)]


def station_job_prefix(records: list[dict[str, Any]], budget_ms: int, enqueue_ms: int) -> bytes:
    """A one-station job (the shape of earlier releases) up to its deadline value.  The job id
    ``{TAG}:BATCH:STATION`` says which station; the arguments are ``[records, budget_ms, deadline_ms]``."""
    return _job(STATION_JOB, [records, budget_ms, 0], enqueue_ms)[: -len(_DEADLINE_TAIL)]


def station_job(records: list[dict[str, Any]], budget_ms: int, deadline_ms: int, tried: int, enqueue_ms: int) -> bytes:
    """A one-station job split off a group whose worker died: ``tried`` earlier attempts never finished,
    so arq starts it at attempt ``tried + 1`` (its own ``"t"`` field: the job's retry count follows,
    and any release's ``run_station`` reads the attempt from arq's ``job_try``)."""
    return _job(STATION_JOB, [records, budget_ms, deadline_ms], enqueue_ms, job_try=tried + 1)


def _group_slices(spec: BatchSpec) -> list[tuple[int, int]]:
    """(start, end) of each job's stations, in station order."""
    sizes = spec.group_sizes or [len(spec.stations)]
    if sum(sizes) != len(spec.stations) or min(sizes) < 1:
        raise StoreError(f"batch {spec.batch_id}: group sizes {sizes} do not cover its {len(spec.stations)} stations")
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


class Transitions(StoreBase):
    """Ingest, record, finalize and upload: what the three services do to a batch."""

    ingest_wait: tuple[int, int] | None = None  # (replicas, timeout ms): WAIT after each ingest write

    async def _ingest(self, name: str, keys: Sequence[Any], args: Sequence[Any], what: str) -> Any:
        if self.ingest_wait is None:
            return await self.scripts.run(name, keys, args)
        replicas, timeout_ms = self.ingest_wait
        reply, acked = await self.scripts.run_and_wait(name, keys, args, replicas, timeout_ms)
        if acked < replicas:
            log.warning(
                "%s: acknowledged by %d of %d replica(s) within %d ms; a failover now could lose it "
                "(fenced ingest would then re-ingest it)",
                what,
                acked,
                replicas,
                timeout_ms,
            )
        return reply

    # -- dispatcher --------------------------------------------------------------------------
    async def load_offsets(self, fields: Iterable[str]) -> dict[str, int]:
        """The stored next offset of each ``TOPIC:PARTITION`` field that has one."""
        by_shard: dict[int, list[str]] = {}
        for name in fields:
            topic, _, partition = name.rpartition(":")
            by_shard.setdefault(self.keys.shard_of_partition(topic, int(partition)), []).append(name)
        if not by_shard:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard, names in by_shard.items():
                pipe.hmget(self.keys.offsets(shard), names)
            replies = await pipe.execute()
        stored: dict[str, int] = {}
        for names, values in zip(by_shard.values(), replies, strict=True):
            stored.update({f: int(v) for f, v in zip(names, values, strict=True) if v is not None})
        return stored

    async def create_batch(
        self, spec: BatchSpec, *, extra_meta: dict[str, str] | None = None, expected: Expected | None = None
    ) -> tuple[bool, int]:
        """Write the batch, its jobs and the partitions' next offsets in one atomic step.

        Returns (created, created_ms); ``created`` is False when the batch already existed.
        Raises FencedOffsetError when Redis holds another next offset than ``expected`` for one of
        the batch's partitions, StaleOffsetError when the offsets were already ingested (nothing
        written either way).
        """
        k = self.keys
        bid = spec.batch_id
        shard = self._shard_of_spec(spec)
        meta: dict[str, str] = {
            "topic": spec.topic,
            "timeout_ms": str(int(spec.timeout_s * 1000)),
            "retention_s": str(spec.retention_s),
            "late_policy": spec.late_policy,
            "messages": str(spec.messages),
            "stations": orjson.dumps(list(spec.stations)).decode(),
            "priority": spec.priority,
            "quorum_needed": str(spec.quorum_needed),
            "quorum_grace_ms": str(int(spec.quorum_grace_s * 1000)),
            "source": ",".join(f"{r.partition}@{r.first_offset}-{r.next_offset - 1}" for r in spec.ranges),
            "inc": spec.incarnation,
            **(extra_meta or {}),
        }
        timeout_ms = int(spec.timeout_s * 1000)
        job_keys, payloads = self._jobs(spec, timeout_ms)
        args: list[bytes | str | int] = [bid, timeout_ms, timeout_ms + _JOB_EXPIRE_EXTRA_MS, int(spec.queue_boost_s * 1000)]
        args.append(len(meta))
        for name, value in meta.items():
            args += [name, value]
        args.append(len(spec.ranges))
        for r in spec.ranges:
            name = offset_field(r.topic, r.partition)
            args += [name, _expected_arg(expected, name), r.first_offset, r.next_offset]
        args.append(len(spec.stations))
        args += spec.stations.keys()
        args += payloads
        keys = [
            k.batch(bid),
            k.inputs(bid),
            k.due(shard),
            k.offsets(shard),
            k.queue(shard),
            k.stats(shard),
            k.batches(shard),
            *job_keys,
        ]
        reply = await self._ingest("create_batch", keys, args, f"batch {bid}")
        kind = reply_kind("create_batch", reply, ("created", "exists", "fenced", "stale"))
        if kind == "fenced":
            raise _fenced(text(reply[1]), expected, reply[2])
        if kind == "stale":
            raise StaleOffsetError(text(reply[1]), int(reply[2]))
        return kind == "created", int(reply[1])

    def _shard_of_spec(self, spec: BatchSpec) -> int:
        """The batch's shard; every partition it ingests must belong to it (one slot per transition)."""
        shard = self.keys.shard_of_batch(spec.batch_id)
        other = [r for r in spec.ranges if self.keys.shard_of_partition(r.topic, r.partition) != shard]
        if other:
            raise StoreError(
                f"batch {spec.batch_id} spans shards: partitions {[r.partition for r in other]} are not in shard {shard}"
            )
        return shard

    def _jobs(self, spec: BatchSpec, timeout_ms: int) -> tuple[list[str], list[bytes]]:
        """The arq job key and payload prefix of each job of a batch: one per group of stations, or one
        per station for the "station" shape."""
        et = int(time.time() * 1000)
        bid = spec.batch_id
        if spec.job_shape == "station":  # for workers of an earlier release: ids without the incarnation
            keys = [self.keys.job(bid, station) for station in spec.stations]
            return keys, [station_job_prefix(records, timeout_ms, et) for records in spec.stations.values()]
        items = list(spec.stations.items())
        keys, payloads = [], []
        for index, (start, end) in enumerate(_group_slices(spec)):
            keys.append(self.keys.group_job(bid, index, spec.incarnation))
            payloads.append(group_job_prefix(dict(items[start:end]), timeout_ms, et))
        return keys, payloads

    async def quarantine(
        self, entry: QuarantineEntry, *, retention_s: int, max_entries: int, expected: Expected | None = None
    ) -> bool:
        """Keep a bad message with its reason.  True when newly quarantined (False: already there).
        Raises FencedOffsetError / StaleOffsetError as :meth:`create_batch` does (nothing written)."""
        mid = message_id_for(entry.topic, entry.partition, entry.offset)
        fields: list[bytes | str | int] = [
            "reason",
            entry.reason,
            "topic",
            entry.topic,
            "partition",
            entry.partition,
            "offset",
            entry.offset,
            "size",
            entry.size,
            "value",
            entry.value,
        ]
        shard = self.keys.shard_of_partition(entry.topic, entry.partition)
        k = self.keys
        keys = [k.quarantined(mid), k.quarantine(shard), k.offsets(shard), k.stats(shard)]
        name = offset_field(entry.topic, entry.partition)
        args: list[bytes | str | int] = [
            mid,
            name,
            entry.offset,
            "1" if entry.advance_offset else "0",
            _expected_arg(expected, name),
            retention_s,
            max_entries,
            *fields,
        ]
        reply = await self._ingest("quarantine_message", keys, args, f"quarantine of {mid}")
        kind = reply_kind("quarantine_message", reply, ("quarantined", "exists", "fenced", "stale"))
        if kind == "fenced":
            raise _fenced(name, expected, reply[1])
        if kind == "stale":
            raise StaleOffsetError(name, int(reply[1]))
        return kind == "quarantined"

    # -- workers -----------------------------------------------------------------------------
    async def claim_jobs(
        self, shard: int, job_ids: Sequence[str], *, now_ms: int, in_progress_ms: int, want: int
    ) -> list[tuple[str, int]]:
        """Claim up to ``want`` of these queued arq jobs of one shard for this worker, as arq's own
        claim would; returns (job id, score) of each job claimed."""
        if want <= 0 or not job_ids:
            return []
        keys = [self.keys.queue(shard), *(Keys.in_progress(job_id) for job_id in job_ids)]
        reply = await self.scripts.run("claim_jobs", keys, [now_ms, in_progress_ms, want, *job_ids])
        return [(text(reply[i]), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)]

    async def record_outcomes(
        self, batch_id: str, outcomes: Sequence[tuple[str, Outcome]], incarnation: str = ""
    ) -> RecordedOutcomes:
        """Record several stations of one batch in one script call (each at most once, first wins).
        ``incarnation``: the batch's the outcomes were computed for (from the job id); another
        incarnation's outcomes are refused as stale ("" = any)."""
        k = self.keys
        shard = k.shard_of_batch(batch_id)
        keys = [
            k.batch(batch_id),
            k.inputs(batch_id),
            k.outcomes(batch_id),
            k.late(batch_id),
            k.due(shard),
            k.ready(shard),
            k.stats(shard),
        ]
        args: list[bytes | str] = [batch_id, incarnation]
        for station_id, outcome in outcomes:
            args += [station_id, outcome.status, outcome.to_json()]
        reply = await self.scripts.run("record_outcome", keys, args)
        kind = reply_kind("record_outcome", reply, _RECORD_KINDS)
        codes = text(reply[3])
        if len(codes) != len(outcomes):
            raise StoreError(f"record_outcome.lua returned {reply!r} for {len(outcomes)} station(s)")
        return RecordedOutcomes(kind, int(reply[1]), int(reply[2]), codes)  # type: ignore[arg-type]

    async def record_outcome(self, batch_id: str, station_id: str, outcome: Outcome) -> RecordResult:
        """Record one station's outcome (at most once, first wins)."""
        rec = await self.record_outcomes(batch_id, [(station_id, outcome)])
        return RecordResult(rec.event or rec.status(0), rec.done, rec.expected)

    async def batch_state(self, batch_id: str) -> str | None:
        """The batch's state (open, finalized, uploaded, dead), None when it does not exist."""
        state = await aw(self.redis.hget(self.keys.batch(batch_id), "state"))
        return text(state) if state is not None else None

    async def split_group(
        self, batch_id: str, jobs: Mapping[str, bytes], *, score: int, job_expire_ms: int, incarnation: str = ""
    ) -> tuple[str, int, int]:
        """Queue a one-station job (``jobs``: station id -> its arq job JSON) for each station of a group
        of the batch's ``incarnation`` that has no outcome yet.  Returns ("split", jobs created, stations
        already recorded), ("closed", 0, 0) when the batch is no longer open, or ("stale", 0, 0) when it
        is open as another incarnation."""
        k = self.keys
        queue = k.queue(k.shard_of_batch(batch_id))
        keys = [k.batch(batch_id), k.outcomes(batch_id), queue, *(k.job(batch_id, s, incarnation) for s in jobs)]
        args: list[bytes | str | int] = [job_expire_ms, score, incarnation]
        for station_id, job in jobs.items():
            args += [station_id, job]
        reply = await self.scripts.run("split_group", keys, args)
        kind = reply_kind("split_group", reply, ("split", "closed", "stale"))
        if kind != "split":
            return kind, 0, 0
        return "split", int(reply[1]), int(reply[2])

    # -- aggregator --------------------------------------------------------------------------
    async def due_batches(self, now_ms: int, limit: int) -> list[str]:
        """Batch ids whose due time or upload lease has passed, most urgent first (all shards)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.keys.shards):
                pipe.zrangebyscore(self.keys.due(shard), "-inf", now_ms, start=0, num=limit, withscores=True)
                pipe.zrangebyscore(self.keys.leases(shard), "-inf", now_ms, start=0, num=limit, withscores=True)
            replies = await pipe.execute()
        due = sorted((score, text(b)) for reply in replies[0::2] for b, score in reply)
        expired = sorted((score, text(b)) for reply in replies[1::2] for b, score in reply)
        return [b for _, b in due[:limit]] + [b for _, b in expired[:limit]]

    async def next_due_ms(self) -> int | None:
        """The earliest due time or lease expiry of any shard, if any batch is waiting."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.keys.shards):
                pipe.zrange(self.keys.due(shard), 0, 0, withscores=True)
                pipe.zrange(self.keys.leases(shard), 0, 0, withscores=True)
            replies = await pipe.execute()
        scores = [int(score) for reply in replies for _, score in reply]
        return min(scores) if scores else None

    async def wait_ready(self, shard: int, timeout_s: float) -> str | None:
        """Block until some batch of this shard completes (or the timeout passes).  A multi-key BLPOP
        would be cross-slot: callers wait on each shard separately."""
        reply = await aw(self.redis.blpop([self.keys.ready(shard)], timeout=max(timeout_s, 0.01)))  # type: ignore[arg-type]
        return text(reply[1]) if reply else None

    async def claim(self, batch_id: str, lease_ms: int) -> Claim | None:
        """Lease the batch's upload.  The fencing token is the shard's counter plus a random nonce of
        this claim: unique even when Redis lost writes and the counter went backwards."""
        k = self.keys
        shard = k.shard_of_batch(batch_id)
        keys = [k.batch(batch_id), k.outcomes(batch_id), k.payload(batch_id), k.due(shard), k.leases(shard), k.fence(shard)]
        reply = await self.scripts.run("claim_batch", keys, [batch_id, lease_ms, secrets.token_hex(8)])
        if reply_kind("claim_batch", reply, ("claimed", "not_due", "gone")) != "claimed":
            return None
        meta = {name: text(v) for name, v in pairs(reply[3]).items()}
        outcomes = {name: Outcome.from_json(v) for name, v in pairs(reply[4]).items()}
        stations = [str(s) for s in orjson.loads(meta.get("stations", "[]"))]
        return Claim(batch_id, text(reply[1]), int(reply[2]), meta, outcomes, reply[5], stations)

    async def freeze_payload(self, claim: Claim, payload: bytes) -> bytes | None:
        """The body every attempt sends (stored once); None when our lease was taken over."""
        reply = await self.scripts.run("freeze_payload", self._freeze_keys(claim), [claim.token, payload])
        return _frozen(reply)

    async def freeze_payload_replicated(
        self, claim: Claim, payload: bytes, replicas: int, timeout_ms: int
    ) -> tuple[bytes | None, int]:
        """freeze_payload, then ``WAIT replicas timeout_ms`` on the same connection: the body to send
        (None when our lease was taken over) and how many replicas hold it and everything before it.
        Safe to repeat: the script writes on every call, so each WAIT covers the body."""
        args = [claim.token, payload]
        reply, acked = await self.scripts.run_and_wait("freeze_payload", self._freeze_keys(claim), args, replicas, timeout_ms)
        return _frozen(reply), acked

    def _freeze_keys(self, claim: Claim) -> list[str]:
        return [self.keys.batch(claim.batch_id), self.keys.payload(claim.batch_id)]

    async def ack_upload(
        self,
        claim: Claim,
        *,
        retention_s: int,
        upload_ms: float,
        uploaded_by: str = "",
        counts: Mapping[str, int] | None = None,
    ) -> int | None:
        """Redis time (ms) at which the batch became uploaded; None when our lease was taken over.
        ``counts`` (the payload's ok/failed/empty/missing stations) feed the last-hour rate ring."""
        k = self.keys
        shard = k.shard_of_batch(claim.batch_id)
        keys = [*k.batch_keys(claim.batch_id), k.leases(shard), k.recent(shard), k.stats(shard)]
        args: list[str | int | float] = [claim.batch_id, claim.token, retention_s, round(upload_ms, 3), uploaded_by]
        if counts is not None:
            keys.append(k.rates(shard))
            args += [int(counts.get(name, 0)) for name in RATE_OUTCOMES]
        reply = await self.scripts.run("ack_upload", keys, args)
        return int(reply[1]) if reply_kind("ack_upload", reply, ("uploaded", "fenced")) == "uploaded" else None

    async def fail_upload(self, claim: Claim, *, retry_delay_ms: int, max_attempts: int, error: str) -> tuple[str, int]:
        """Schedule a retry or dead-letter; returns ("retry"|"dead"|"fenced", failures so far)."""
        k = self.keys
        shard = k.shard_of_batch(claim.batch_id)
        keys = [k.batch(claim.batch_id), k.due(shard), k.leases(shard), k.dead(shard), k.stats(shard)]
        reply = await self.scripts.run(
            "fail_upload", keys, [claim.batch_id, claim.token, retry_delay_ms, max_attempts, error[:2000]]
        )
        kind = reply_kind("fail_upload", reply, ("retry", "dead", "fenced"))
        return kind, int(reply[1]) if kind != "fenced" else 0

    async def replay(self, batch_id: str) -> tuple[bool, str]:
        """Re-queue a dead-lettered batch for upload: (replayed, state it was in)."""
        k = self.keys
        shard = k.shard_of_batch(batch_id)
        reply = await self.scripts.run("replay_batch", [k.batch(batch_id), k.due(shard), k.dead(shard), k.stats(shard)], [batch_id])
        kind = reply_kind("replay_batch", reply, ("replayed", "not_dead"))
        return kind == "replayed", (text(reply[1]) if kind == "not_dead" else "dead")

    async def prune_batch_index(self, limit: int = 500) -> int:
        """Drop the oldest index entries whose batch has expired, in every shard; returns how many."""
        dropped = 0
        for shard in range(self.keys.shards):
            dropped += await self._prune_shard_index(shard, limit)
        return dropped

    async def _prune_shard_index(self, shard: int, limit: int) -> int:
        index = self.keys.batches(shard)
        oldest = [text(b) for b in await aw(self.redis.zrange(index, 0, limit - 1))]
        if not oldest:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in oldest:
                pipe.exists(self.keys.batch(bid))
            alive = await pipe.execute()
        gone = [bid for bid, exists in zip(oldest, alive, strict=True) if not exists]
        if gone:
            await aw(self.redis.zrem(index, *gone))
        return len(gone)

    async def open_batches(self) -> tuple[int, int]:
        """(batches created but not yet uploaded or dead-lettered, jobs queued), all shards."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.keys.shards):
                pipe.zcard(self.keys.due(shard))
                pipe.zcard(self.keys.leases(shard))
                pipe.zcard(self.keys.queue(shard))
            replies = [int(n) for n in await pipe.execute()]
        return sum(replies[0::3]) + sum(replies[1::3]), sum(replies[2::3])


def _frozen(reply: Any) -> bytes | None:
    """freeze_payload.lua's reply: the body to send, or None when the lease was taken over."""
    return bytes(reply[1]) if reply_kind("freeze_payload", reply, ("frozen", "fenced")) == "frozen" else None
