"""BatchStore: the one class that talks to Redis.

Every state transition is one Lua script (``batchfleet/lua/*.lua``, contract at the top of each),
registered once per client; redis-py's script objects reload themselves after a Redis restart
(NOSCRIPT).  Services call typed methods here and never issue raw Redis commands.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import orjson
import redis.asyncio as aioredis

from batchfleet.errors import StaleOffsetError, StoreError
from batchfleet.keys import Keys, message_id_for, offset_field
from batchfleet.models import BatchSpec, Claim, Outcome, QuarantineEntry, RecordResult, StationInput
from batchfleet.settings import Settings

__all__ = ["STATION_JOB", "BatchStore", "station_job_prefix"]

T = TypeVar("T")
_LUA_DIR = Path(__file__).with_name("lua")
STATION_JOB = "run_station"  # the arq function name of a station job
_JOB_EXPIRE_EXTRA_MS = 60_000  # a job not started by deadline + this is dropped by arq unrun


def _lua(name: str) -> str:
    return (_LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def _s(value: bytes | str | int) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _pairs(flat: Sequence[bytes]) -> dict[str, bytes]:
    return {_s(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


async def _aw(value: Awaitable[T] | T) -> T:
    """redis-py types its commands as sync-or-async; the asyncio client always returns awaitables."""
    if inspect.isawaitable(value):
        return await value
    return value


_DEADLINE_TAIL = b"0]}"


def station_job_prefix(records: list[dict[str, Any]], budget_ms: int, enqueue_ms: int) -> bytes:
    """A station's arq job (JSON, readable by an unmodified arq worker) up to its deadline value,
    which create_batch.lua appends in Redis time.  The job id ``{BATCH}:STATION`` says which station;
    the arguments ``[records, budget_ms, deadline_ms]`` carry what the worker needs to run it without
    reading Redis first (positional: keyword names would cost ~36 bytes per queued station)."""
    job: dict[str, Any] = {"t": None, "f": STATION_JOB, "et": enqueue_ms, "k": {}, "a": [records, budget_ms, 0]}
    encoded = orjson.dumps(job)
    return encoded[: -len(_DEADLINE_TAIL)]


def make_client(url: str, *, name: str = "batchfleet", tls_ca_file: str | None = None) -> aioredis.Redis:
    """A redis-py asyncio client.  A dropped connection is re-opened by the pool on the next command;
    the services' own loops retry with backoff (redis-py's Retry would also retry authentication
    errors, which hangs a misconfigured client instead of failing loudly)."""
    tls: dict[str, Any] = {"ssl_ca_certs": tls_ca_file} if tls_ca_file and url.startswith("rediss://") else {}
    return cast(
        aioredis.Redis,
        aioredis.Redis.from_url(
            url,
            **tls,
            decode_responses=False,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=15,
            client_name=name,
        ),
    )


class BatchStore:
    """All of batchfleet's Redis state, behind one typed surface."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "bf", queue_name: str = "bf:queue") -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.queue_name = queue_name
        self._create = client.register_script(_lua("create_batch"))
        self._record = client.register_script(_lua("record_outcome"))
        self._claim = client.register_script(_lua("claim_batch"))
        self._ack = client.register_script(_lua("ack_upload"))
        self._fail = client.register_script(_lua("fail_upload"))
        self._quarantine = client.register_script(_lua("quarantine_message"))
        self._replay = client.register_script(_lua("replay_batch"))
        self._freeze = client.register_script(_lua("freeze_payload"))
        self._claim_jobs = client.register_script(_lua("claim_jobs"))

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "bf", queue_name: str = "bf:queue", name: str = "batchfleet", tls_ca_file: str | None = None
    ) -> Self:
        return cls(make_client(url, name=name, tls_ca_file=tls_ca_file), prefix=prefix, queue_name=queue_name)

    @classmethod
    def from_settings(cls, settings: Settings, *, name: str = "batchfleet") -> Self:
        ca = str(settings.redis_tls_ca_file) if settings.redis_tls_ca_file else None
        return cls.from_url(
            settings.redis_url.get_secret_value(),
            prefix=settings.key_prefix,
            queue_name=settings.queue_name,
            name=name,
            tls_ca_file=ca,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.redis.aclose()

    # -- time --------------------------------------------------------------------------------
    async def server_time_ms(self) -> int:
        """Redis server time: the only clock that deadlines, leases and retention use."""
        seconds, micros = await _aw(self.redis.time())
        return int(seconds) * 1000 + int(micros) // 1000

    # -- dispatcher --------------------------------------------------------------------------
    async def load_offsets(self, fields: Iterable[str]) -> dict[str, int]:
        """The stored next offset of each ``TOPIC:PARTITION`` field that has one."""
        names = list(fields)
        if not names:
            return {}
        values = await _aw(self.redis.hmget(self.keys.offsets, names))
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
        reply = await self._create(keys=keys, args=args)
        kind = _s(reply[0])
        if kind == "stale":
            raise StaleOffsetError(_s(reply[1]), int(reply[2]))
        if kind == "exists":
            return False, int(reply[1])
        if kind != "created":
            raise StoreError(f"create_batch returned {reply!r}")
        return True, int(reply[1])

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
        reply = await self._quarantine(keys=keys, args=args)
        kind = _s(reply[0])
        if kind == "stale":
            raise StaleOffsetError(offset_field(entry.topic, entry.partition), int(reply[1]))
        return kind == "quarantined"

    async def open_batches(self) -> tuple[int, int]:
        """(batches created but not yet uploaded or dead-lettered, station jobs queued)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.due)
            pipe.zcard(self.keys.leases)
            pipe.zcard(self.queue_name)
            due, leased, queued = await pipe.execute()
        return int(due) + int(leased), int(queued)

    # -- workers -----------------------------------------------------------------------------
    async def station_input(self, batch_id: str, station_id: str) -> StationInput:
        """The batch's state and timeout; the station's records only for a batch written before
        records travelled in the arq job (otherwise None, as for a station that is gone)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.batch(batch_id), ["state", "timeout_ms"])
            pipe.hget(self.keys.inputs(batch_id), station_id)
            (state, timeout_ms), raw = await pipe.execute()
        return StationInput(
            state=_s(state) if state is not None else None,
            records=orjson.loads(raw) if raw else None,
            timeout_ms=int(timeout_ms) if timeout_ms is not None else None,
        )

    async def claim_jobs(self, job_ids: Sequence[str], *, now_ms: int, in_progress_ms: int, want: int) -> list[tuple[str, int]]:
        """Claim up to ``want`` of these queued arq jobs for this worker, as arq's own claim would;
        returns (job id, score) of each job claimed."""
        if want <= 0 or not job_ids:
            return []
        keys = [self.queue_name, *(Keys.in_progress(job_id) for job_id in job_ids)]
        reply = await self._claim_jobs(keys=keys, args=[now_ms, in_progress_ms, want, *job_ids])
        return [(_s(reply[i]), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)]

    async def record_outcome(self, batch_id: str, station_id: str, outcome: Outcome) -> RecordResult:
        k = self.keys
        keys = [k.batch(batch_id), k.inputs(batch_id), k.outcomes(batch_id), k.late(batch_id), k.due, k.ready, k.stats]
        reply = await self._record(keys=keys, args=[batch_id, station_id, outcome.status, outcome.to_json()])
        status = _s(reply[0])
        if status not in ("recorded", "complete", "quorum", "duplicate", "late", "unknown"):
            raise StoreError(f"record_outcome returned {reply!r}")
        return RecordResult(status, int(reply[1]), int(reply[2]))  # type: ignore[arg-type]

    # -- aggregator --------------------------------------------------------------------------
    async def due_batches(self, now_ms: int, limit: int) -> list[str]:
        """Batch ids whose due time or upload lease has passed, most urgent first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self.keys.due, "-inf", now_ms, start=0, num=limit)
            pipe.zrangebyscore(self.keys.leases, "-inf", now_ms, start=0, num=limit)
            due, expired = await pipe.execute()
        return [_s(b) for b in due] + [_s(b) for b in expired]

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
        reply = await _aw(self.redis.blpop([self.keys.ready], timeout=max(timeout_s, 0.01)))  # type: ignore[arg-type]
        return _s(reply[1]) if reply else None

    async def claim(self, batch_id: str, lease_ms: int) -> Claim | None:
        k = self.keys
        keys = [k.batch(batch_id), k.outcomes(batch_id), k.payload(batch_id), k.due, k.leases, k.fence]
        reply = await self._claim(keys=keys, args=[batch_id, lease_ms])
        if _s(reply[0]) != "claimed":
            return None
        meta = {name: _s(v) for name, v in _pairs(reply[3]).items()}
        outcomes = {name: Outcome.from_json(v) for name, v in _pairs(reply[4]).items()}
        stations = [str(s) for s in orjson.loads(meta.get("stations", "[]"))]
        return Claim(batch_id, _s(reply[1]), int(reply[2]), meta, outcomes, reply[5], stations)

    async def freeze_payload(self, claim: Claim, payload: bytes) -> bytes | None:
        """The body every attempt sends (stored once); None when our lease was taken over."""
        keys = [self.keys.batch(claim.batch_id), self.keys.payload(claim.batch_id)]
        reply = await self._freeze(keys=keys, args=[claim.token, payload])
        return bytes(reply[1]) if _s(reply[0]) == "frozen" else None

    async def ack_upload(self, claim: Claim, *, retention_s: int, upload_ms: float) -> int | None:
        """Redis time (ms) at which the batch became uploaded; None when our lease was taken over."""
        k = self.keys
        keys = [*k.batch_keys(claim.batch_id), k.leases, k.recent, k.stats]
        reply = await self._ack(keys=keys, args=[claim.batch_id, claim.token, retention_s, round(upload_ms, 3)])
        return int(reply[1]) if _s(reply[0]) == "uploaded" else None

    async def fail_upload(self, claim: Claim, *, retry_delay_ms: int, max_attempts: int, error: str) -> tuple[str, int]:
        """Schedule a retry or dead-letter; returns ("retry"|"dead"|"fenced", failures so far)."""
        k = self.keys
        keys = [k.batch(claim.batch_id), k.due, k.leases, k.dead, k.stats]
        reply = await self._fail(keys=keys, args=[claim.batch_id, claim.token, retry_delay_ms, max_attempts, error[:2000]])
        kind = _s(reply[0])
        return kind, int(reply[1]) if kind != "fenced" else 0

    async def replay(self, batch_id: str) -> tuple[bool, str]:
        """Re-queue a dead-lettered batch for upload: (replayed, state it was in)."""
        k = self.keys
        reply = await self._replay(keys=[k.batch(batch_id), k.due, k.dead, k.stats], args=[batch_id])
        return _s(reply[0]) == "replayed", (_s(reply[1]) if len(reply) > 1 else "dead")

    # -- heartbeats ---------------------------------------------------------------------------
    async def beat(self, member: str, info: dict[str, Any], ttl_s: int) -> None:
        """Refresh one process's heartbeat (``member`` = ``ROLE:HOST:PID``)."""
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.proc(member), orjson.dumps(info), ex=ttl_s)
            pipe.zadd(self.keys.procs, {member: now_ms})
            pipe.zremrangebyscore(self.keys.procs, "-inf", now_ms - 86_400_000)
            await pipe.execute()

    async def forget_process(self, member: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.proc(member))
            pipe.zrem(self.keys.procs, member)
            await pipe.execute()

    async def live_processes(self, role: str | None = None) -> dict[str, dict[str, Any]]:
        """``ROLE:HOST:PID`` -> heartbeat info, for processes whose heartbeat has not expired."""
        members = [_s(m) for m in await _aw(self.redis.zrange(self.keys.procs, 0, -1))]
        if role is not None:
            members = [m for m in members if m.startswith(f"{role}:")]
        if not members:
            return {}
        values = await _aw(self.redis.mget([self.keys.proc(m) for m in members]))
        return {m: orjson.loads(v) for m, v in zip(members, values, strict=True) if v is not None}

    # -- inspection --------------------------------------------------------------------------
    async def batch_meta(self, batch_id: str) -> dict[str, str]:
        raw = await _aw(self.redis.hgetall(self.keys.batch(batch_id)))
        return {_s(name): _s(v) for name, v in raw.items()}

    async def batch_ttl_s(self, batch_id: str) -> int:
        """Seconds until the batch's keys expire; -1 while it has no TTL (not yet uploaded, or dead)."""
        return int(await _aw(self.redis.ttl(self.keys.batch(batch_id))))

    async def batch_outcomes(self, batch_id: str) -> dict[str, Outcome]:
        raw = await _aw(self.redis.hgetall(self.keys.outcomes(batch_id)))
        return {_s(name): Outcome.from_json(v) for name, v in raw.items()}

    async def late_outcomes(self, batch_id: str) -> dict[str, Outcome]:
        raw = await _aw(self.redis.hgetall(self.keys.late(batch_id)))
        return {_s(name): Outcome.from_json(v) for name, v in raw.items()}

    async def stats(self) -> dict[str, int]:
        raw = await _aw(self.redis.hgetall(self.keys.stats))
        return {_s(name): int(v) for name, v in raw.items()}

    async def open_batch_ids(self, limit: int = 50) -> list[tuple[str, int]]:
        """(batch id, due ms) of batches not yet uploaded, soonest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.due, 0, limit - 1, withscores=True)
            pipe.zrange(self.keys.leases, 0, limit - 1, withscores=True)
            due, leased = await pipe.execute()
        return [(_s(m), int(s)) for m, s in due + leased]

    async def recent_batch_ids(self, limit: int = 20) -> list[str]:
        return [_s(b) for b in await _aw(self.redis.lrange(self.keys.recent, 0, limit - 1))]

    async def dead_batch_ids(self) -> list[str]:
        return [_s(b) for b in await _aw(self.redis.zrange(self.keys.dead, 0, -1))]

    async def quarantined(self, limit: int = 100) -> list[dict[str, bytes]]:
        ids = [_s(m) for m in await _aw(self.redis.zrevrange(self.keys.quarantine, 0, limit - 1))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.hgetall(self.keys.quarantined(mid))
            raws = await pipe.execute() if ids else []
        return [{_s(name): v for name, v in raw.items()} | {"id": mid.encode()} for mid, raw in zip(ids, raws, strict=True) if raw]

    async def progress(self, batch_ids: list[str]) -> list[dict[str, Any]]:
        """Per batch: meta fields used by progress views, plus ``done`` (outcomes so far)."""
        fields = [
            "topic",
            "state",
            "expected",
            "created_ms",
            "deadline_ms",
            "finalized_ms",
            "uploaded_ms",
            "reason",
            "late",
            "upload_failures",
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in batch_ids:
                pipe.hmget(self.keys.batch(bid), fields)
                pipe.hlen(self.keys.outcomes(bid))
            replies = await pipe.execute()
        rows: list[dict[str, Any]] = []
        for i, bid in enumerate(batch_ids):
            values, done = replies[2 * i], replies[2 * i + 1]
            if values[0] is None:
                continue
            row: dict[str, Any] = {"batch_id": bid, "done": int(done)}
            row.update({f: _s(v) for f, v in zip(fields, values, strict=True) if v is not None})
            rows.append(row)
        return rows

    async def payload(self, batch_id: str) -> bytes | None:
        value = await _aw(self.redis.get(self.keys.payload(batch_id)))
        return bytes(value) if value is not None else None

    async def counts(self) -> dict[str, int]:
        """Sizes of the fleet-wide indexes: open (due + leased), dead-lettered, quarantined, queued."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in (self.keys.due, self.keys.leases, self.keys.dead, self.keys.quarantine, self.queue_name):
                pipe.zcard(key)
            due, leased, dead, quarantined, queued = await pipe.execute()
        return {
            "open": int(due) + int(leased),
            "leased": int(leased),
            "dead": int(dead),
            "quarantined": int(quarantined),
            "queued": int(queued),
        }

    async def prune_batch_index(self, limit: int = 500) -> int:
        """Drop the oldest index entries whose batch has expired; returns how many were dropped."""
        oldest = [_s(b) for b in await _aw(self.redis.zrange(self.keys.batches, 0, limit - 1))]
        if not oldest:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in oldest:
                pipe.exists(self.keys.batch(bid))
            alive = await pipe.execute()
        gone = [bid for bid, exists in zip(oldest, alive, strict=True) if not exists]
        if gone:
            await _aw(self.redis.zrem(self.keys.batches, *gone))
        return len(gone)

    async def batch_ids(self, limit: int) -> list[str]:
        """Batch ids, newest first (ids of expired batches may still be listed: callers drop them)."""
        return [_s(b) for b in await _aw(self.redis.zrevrange(self.keys.batches, 0, limit - 1))]

    async def quarantined_entry(self, message_id: str) -> dict[str, bytes] | None:
        raw = await _aw(self.redis.hgetall(self.keys.quarantined(message_id)))
        return {_s(name): v for name, v in raw.items()} if raw else None

    async def mark_redispatched(self, message_id: str, how: str) -> None:
        await _aw(self.redis.hset(self.keys.quarantined(message_id), mapping={"redispatched": how}))

    async def queue_depth(self) -> int:
        return int(await _aw(self.redis.zcard(self.queue_name)))
