"""The state transitions: one method per Lua script, plus the reads the services' loops need.

Ingest (dispatcher), recording (workers) and finalize/upload (aggregator).  Every script reply is
checked against the kinds its contract documents (:func:`~batchfleet.store.scripts.reply_kind`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from batchfleet.errors import StaleOffsetError
from batchfleet.keys import Keys, message_id_for, offset_field
from batchfleet.models import BatchSpec, Claim, Outcome, QuarantineEntry, RecordResult, StationInput
from batchfleet.store.base import StoreBase, aw, pairs, text
from batchfleet.store.scripts import RATE_OUTCOMES, reply_kind

__all__ = ["STATION_JOB", "Transitions", "station_job_prefix"]

_RECORD_KINDS = ("recorded", "complete", "quorum", "duplicate", "late", "unknown")

STATION_JOB = "run_station"  # the arq function name of a station job
_JOB_EXPIRE_EXTRA_MS = 60_000  # a job not started by deadline + this is dropped by arq unrun


_DEADLINE_TAIL = b"0]}"


def station_job_prefix(records: list[dict[str, Any]], budget_ms: int, enqueue_ms: int) -> bytes:
    """A station's arq job (JSON, readable by an unmodified arq worker) up to its deadline value,
    which create_batch.lua appends in Redis time.  The job id ``{BATCH}:STATION`` says which station;
    the arguments ``[records, budget_ms, deadline_ms]`` carry what the worker needs to run it without
    reading Redis first (positional: keyword names would cost ~36 bytes per queued station)."""
    job: dict[str, Any] = {"t": None, "f": STATION_JOB, "et": enqueue_ms, "k": {}, "a": [records, budget_ms, 0]}
    encoded = orjson.dumps(job)
    return encoded[: -len(_DEADLINE_TAIL)]


class Transitions(StoreBase):
    """Ingest, record, finalize and upload: what the three services do to a batch."""

    # -- dispatcher --------------------------------------------------------------------------
    async def load_offsets(self, fields: Iterable[str]) -> dict[str, int]:
        """The stored next offset of each ``TOPIC:PARTITION`` field that has one."""
        names = list(fields)
        if not names:
            return {}
        values = await aw(self.redis.hmget(self.keys.offsets, names))
        return {f: int(v) for f, v in zip(names, values, strict=True) if v is not None}

    async def create_batch(self, spec: BatchSpec, *, extra_meta: dict[str, str] | None = None) -> tuple[bool, int]:
        """Write the batch, its station jobs and the partitions' next offsets in one atomic step.

        Returns (created, created_ms); ``created`` is False when the batch already existed.
        Raises StaleOffsetError when the offsets were already ingested (nothing written).
        """
        k = self.keys
        bid = spec.batch_id
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
            **(extra_meta or {}),
        }
        et = int(time.time() * 1000)
        timeout_ms = int(spec.timeout_s * 1000)
        station_args: list[bytes | str] = []
        job_keys: list[str] = []
        for station, records in spec.stations.items():
            station_args += [station, station_job_prefix(records, timeout_ms, et)]
            job_keys.append(k.job(bid, station))
        args: list[bytes | str | int] = [bid, timeout_ms, timeout_ms + _JOB_EXPIRE_EXTRA_MS, int(spec.queue_boost_s * 1000)]
        args.append(len(meta))
        for name, value in meta.items():
            args += [name, value]
        args.append(len(spec.ranges))
        for r in spec.ranges:
            args += [offset_field(r.topic, r.partition), r.first_offset, r.next_offset]
        args += station_args
        keys = [k.batch(bid), k.inputs(bid), k.due, k.offsets, self.queue_name, k.stats, k.batches, *job_keys]
        reply = await self.scripts.run("create_batch", keys, args)
        kind = reply_kind("create_batch", reply, ("created", "exists", "stale"))
        if kind == "stale":
            raise StaleOffsetError(text(reply[1]), int(reply[2]))
        return kind == "created", int(reply[1])

    async def quarantine(self, entry: QuarantineEntry, *, retention_s: int, max_entries: int) -> bool:
        """Keep a bad message with its reason.  True when newly quarantined (False: already there)."""
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
        keys = [self.keys.quarantined(mid), self.keys.quarantine, self.keys.offsets, self.keys.stats]
        args: list[bytes | str | int] = [
            mid,
            offset_field(entry.topic, entry.partition),
            entry.offset,
            "1" if entry.advance_offset else "0",
            retention_s,
            max_entries,
            *fields,
        ]
        reply = await self.scripts.run("quarantine_message", keys, args)
        kind = reply_kind("quarantine_message", reply, ("quarantined", "exists", "stale"))
        if kind == "stale":
            raise StaleOffsetError(offset_field(entry.topic, entry.partition), int(reply[1]))
        return kind == "quarantined"

    # -- workers -----------------------------------------------------------------------------
    async def station_input(self, batch_id: str, station_id: str) -> StationInput:
        """The batch's state (None once it expired) and its timeout, read before running a station of
        a batch that may already be finalized."""
        state, timeout_ms = await aw(self.redis.hmget(self.keys.batch(batch_id), ["state", "timeout_ms"]))
        return StationInput(
            state=text(state) if state is not None else None,
            timeout_ms=int(timeout_ms) if timeout_ms is not None else None,
        )

    async def claim_jobs(self, job_ids: Sequence[str], *, now_ms: int, in_progress_ms: int, want: int) -> list[tuple[str, int]]:
        """Claim up to ``want`` of these queued arq jobs for this worker, as arq's own claim would;
        returns (job id, score) of each job claimed."""
        if want <= 0 or not job_ids:
            return []
        keys = [self.queue_name, *(Keys.in_progress(job_id) for job_id in job_ids)]
        reply = await self.scripts.run("claim_jobs", keys, [now_ms, in_progress_ms, want, *job_ids])
        return [(text(reply[i]), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)]

    async def record_outcome(self, batch_id: str, station_id: str, outcome: Outcome) -> RecordResult:
        k = self.keys
        keys = [k.batch(batch_id), k.inputs(batch_id), k.outcomes(batch_id), k.late(batch_id), k.due, k.ready, k.stats]
        reply = await self.scripts.run("record_outcome", keys, [batch_id, station_id, outcome.status, outcome.to_json()])
        status = reply_kind("record_outcome", reply, _RECORD_KINDS)
        return RecordResult(status, int(reply[1]), int(reply[2]))  # type: ignore[arg-type]

    # -- aggregator --------------------------------------------------------------------------
    async def due_batches(self, now_ms: int, limit: int) -> list[str]:
        """Batch ids whose due time or upload lease has passed, most urgent first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self.keys.due, "-inf", now_ms, start=0, num=limit)
            pipe.zrangebyscore(self.keys.leases, "-inf", now_ms, start=0, num=limit)
            due, expired = await pipe.execute()
        return [text(b) for b in due] + [text(b) for b in expired]

    async def next_due_ms(self) -> int | None:
        """The earliest due time or lease expiry, if any batch is waiting."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.due, 0, 0, withscores=True)
            pipe.zrange(self.keys.leases, 0, 0, withscores=True)
            due, leases = await pipe.execute()
        scores = [int(s) for _, s in (due + leases)]
        return min(scores) if scores else None

    async def wait_ready(self, timeout_s: float) -> str | None:
        """Block until some batch completes (or the timeout passes)."""
        reply = await aw(self.redis.blpop([self.keys.ready], timeout=max(timeout_s, 0.01)))  # type: ignore[arg-type]
        return text(reply[1]) if reply else None

    async def claim(self, batch_id: str, lease_ms: int) -> Claim | None:
        k = self.keys
        keys = [k.batch(batch_id), k.outcomes(batch_id), k.payload(batch_id), k.due, k.leases, k.fence]
        reply = await self.scripts.run("claim_batch", keys, [batch_id, lease_ms])
        if reply_kind("claim_batch", reply, ("claimed", "not_due", "gone")) != "claimed":
            return None
        meta = {name: text(v) for name, v in pairs(reply[3]).items()}
        outcomes = {name: Outcome.from_json(v) for name, v in pairs(reply[4]).items()}
        stations = [str(s) for s in orjson.loads(meta.get("stations", "[]"))]
        return Claim(batch_id, text(reply[1]), int(reply[2]), meta, outcomes, reply[5], stations)

    async def freeze_payload(self, claim: Claim, payload: bytes) -> bytes | None:
        """The body every attempt sends (stored once); None when our lease was taken over."""
        keys = [self.keys.batch(claim.batch_id), self.keys.payload(claim.batch_id)]
        reply = await self.scripts.run("freeze_payload", keys, [claim.token, payload])
        return bytes(reply[1]) if reply_kind("freeze_payload", reply, ("frozen", "fenced")) == "frozen" else None

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
        keys = [*k.batch_keys(claim.batch_id), k.leases, k.recent, k.stats]
        args: list[str | int | float] = [claim.batch_id, claim.token, retention_s, round(upload_ms, 3), uploaded_by]
        if counts is not None:
            keys.append(k.rates)
            args += [int(counts.get(name, 0)) for name in RATE_OUTCOMES]
        reply = await self.scripts.run("ack_upload", keys, args)
        return int(reply[1]) if reply_kind("ack_upload", reply, ("uploaded", "fenced")) == "uploaded" else None

    async def fail_upload(self, claim: Claim, *, retry_delay_ms: int, max_attempts: int, error: str) -> tuple[str, int]:
        """Schedule a retry or dead-letter; returns ("retry"|"dead"|"fenced", failures so far)."""
        k = self.keys
        keys = [k.batch(claim.batch_id), k.due, k.leases, k.dead, k.stats]
        reply = await self.scripts.run(
            "fail_upload", keys, [claim.batch_id, claim.token, retry_delay_ms, max_attempts, error[:2000]]
        )
        kind = reply_kind("fail_upload", reply, ("retry", "dead", "fenced"))
        return kind, int(reply[1]) if kind != "fenced" else 0

    async def replay(self, batch_id: str) -> tuple[bool, str]:
        """Re-queue a dead-lettered batch for upload: (replayed, state it was in)."""
        k = self.keys
        reply = await self.scripts.run("replay_batch", [k.batch(batch_id), k.due, k.dead, k.stats], [batch_id])
        kind = reply_kind("replay_batch", reply, ("replayed", "not_dead"))
        return kind == "replayed", (text(reply[1]) if kind == "not_dead" else "dead")

    async def prune_batch_index(self, limit: int = 500) -> int:
        """Drop the oldest index entries whose batch has expired; returns how many were dropped."""
        oldest = [text(b) for b in await aw(self.redis.zrange(self.keys.batches, 0, limit - 1))]
        if not oldest:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in oldest:
                pipe.exists(self.keys.batch(bid))
            alive = await pipe.execute()
        gone = [bid for bid, exists in zip(oldest, alive, strict=True) if not exists]
        if gone:
            await aw(self.redis.zrem(self.keys.batches, *gone))
        return len(gone)

    async def open_batches(self) -> tuple[int, int]:
        """(batches created but not yet uploaded or dead-lettered, station jobs queued)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.due)
            pipe.zcard(self.keys.leases)
            pipe.zcard(self.queue_name)
            due, leased, queued = await pipe.execute()
        return int(due) + int(leased), int(queued)
