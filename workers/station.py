"""The station job: run the processor on the station's records, record the outcome once.

The job id ``{TAG}:BATCH:STATION`` names the station; the job's arguments carry its records, its time
budget and the batch deadline (Redis time), so the common case runs without reading Redis first and
records with one script call.  The batch state is read first only when the batch may already be
finalized: its deadline has passed by the worker's estimate of Redis time, or another of its
stations came back late to this worker.  ``record_outcome.lua`` decides either way; the read only
saves running stations whose outcome could no longer be uploaded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from batchfleet import metrics
from batchfleet.heartbeat import every, heartbeat, process_member
from batchfleet.keys import topic_of_batch
from batchfleet.models import Outcome, RecordResult
from batchfleet.retry import Backoff, retry
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.workers.processor import load_processor, run_processor

__all__ = ["WorkerContext", "WorkerState", "close_state", "open_state", "run_station", "shutdown", "startup_with"]

log = logging.getLogger(__name__)
RECORD_BACKOFF = Backoff(0.05, 2.0)
RECORD_ATTEMPTS = 13  # about 12 s of retrying (jittered waits of 0.05 s doubling to 2 s)
MAX_ATTEMPTS = 2  # a station whose attempts killed the worker this often is recorded failed, not run again
CLOCK_EVERY_S = 30.0  # how often a worker re-measures its offset to Redis time
FINALIZED_CACHE = 4096  # batches this worker saw finalized (stations of them are checked before running)


@dataclass
class WorkerState:
    settings: Settings
    store: BatchStore
    processor: Callable[..., Any]
    name: str
    running: set[str] = field(default_factory=set)
    done: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    beat: asyncio.Task[None] | None = None
    clock: asyncio.Task[None] | None = None
    redis_offset_ms: float = 0.0  # Redis time - this host's time, measured every CLOCK_EVERY_S
    finalized: dict[str, None] = field(default_factory=dict)  # insertion-ordered, capped

    def redis_now_ms(self) -> float:
        return time.time() * 1000 + self.redis_offset_ms

    def maybe_finalized(self, batch_id: str, deadline_ms: int | None) -> bool:
        """Whether the batch may be finalized already, so its state is worth a read before running."""
        if batch_id in self.finalized:
            return True
        return deadline_ms is not None and self.redis_now_ms() >= deadline_ms

    def saw_finalized(self, batch_id: str) -> None:
        self.finalized[batch_id] = None
        if len(self.finalized) > FINALIZED_CACHE:
            del self.finalized[next(iter(self.finalized))]

    def info(self) -> dict[str, Any]:
        doing = f"running {len(self.running)} station(s)" if self.running else "idle"
        return {"doing": doing, "running": sorted(self.running)[:10], "done": self.done}


class WorkerContext(TypedDict, total=False):
    """arq's ``ctx`` as batchfleet uses it."""

    redis: Any
    job_id: str
    job_try: int
    batchfleet: WorkerState


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def open_state(settings: Settings) -> WorkerState:
    """What every station job of this process shares: the store, the processor, the heartbeat."""
    store = BatchStore.from_settings(settings, name="batchfleet-worker")
    try:
        await store.check_layout()
        state = WorkerState(settings, store, load_processor(settings.processor), worker_name())
    except BaseException:
        await store.aclose()
        raise
    state.beat = asyncio.create_task(heartbeat(store, process_member("worker"), state.info, state.stop))
    state.clock = asyncio.create_task(_track_clock(state))
    log.info("worker %s ready: processor %s, %d shard(s)", state.name, settings.processor, settings.shards)
    return state


async def close_state(state: WorkerState) -> None:
    state.stop.set()
    for task in (state.beat, state.clock):
        if task is not None:
            await task
    await state.store.aclose()


async def startup_with(ctx: WorkerContext, settings: Settings) -> None:
    """arq ``on_startup`` of a plain ``arq batchfleet.workers.WorkerSettings`` worker."""
    ctx["batchfleet"] = await open_state(settings)


async def shutdown(ctx: WorkerContext) -> None:
    state = ctx.get("batchfleet")
    if state is not None:
        await close_state(state)


async def _track_clock(state: WorkerState) -> None:
    """Keep ``redis_offset_ms`` current (the deadline check in run_station compares in Redis time);
    while Redis is away the last offset stays."""

    async def measure() -> None:
        before = time.time()
        server_ms = await state.store.server_time_ms()
        state.redis_offset_ms = server_ms - (before + time.time()) * 500

    await every(CLOCK_EVERY_S, state.stop, measure, "reading Redis time")


async def _record(state: WorkerState, batch_id: str, station_id: str, outcome: Outcome) -> RecordResult:
    """Record with patience: a Redis blip must not lose a computed outcome.  After RECORD_ATTEMPTS
    the error ends the job (arq runs it again); a shutdown cancels the wait after its grace."""
    return await retry(
        lambda: state.store.record_outcome(batch_id, station_id, outcome),
        what=f"recording {batch_id}/{station_id}",
        backoff=RECORD_BACKOFF,
        attempts=RECORD_ATTEMPTS,
    )


def _log_recorded(batch_id: str, station_id: str, outcome: Outcome, rec: RecordResult, topic: str) -> None:
    extra = {"batch_id": batch_id, "station_id": station_id, "topic": topic}
    if rec.status in ("recorded", "complete", "quorum"):
        log.info(
            "batch %s: station %s %s, progress %d/%d", batch_id, station_id, outcome.status, rec.done, rec.expected, extra=extra
        )
        if outcome.status == "failed":
            log.warning("batch %s: station %s failed: %s", batch_id, station_id, outcome.error, extra=extra)
        if rec.status == "complete":
            log.info("batch %s: all %d stations done, upload triggered", batch_id, rec.expected, extra=extra)
        elif rec.status == "quorum":
            log.info("batch %s: quorum reached with %d/%d stations", batch_id, rec.done, rec.expected, extra=extra)
    elif rec.status == "late":
        log.warning(
            "batch %s: station %s result arrived after finalization (late, not uploaded)", batch_id, station_id, extra=extra
        )
    else:
        log.info("batch %s: station %s outcome ignored (%s)", batch_id, station_id, rec.status, extra=extra)


async def run_station(ctx: WorkerContext, records: list[dict[str, Any]], budget_ms: int, deadline_ms: int) -> str:
    """arq job: one station of one batch, named by the job id ``{TAG}:BATCH:STATION``; the arguments are
    written by create_batch.lua.  Returns what happened (kept by arq only if configured)."""
    state = ctx["batchfleet"]
    batch_id, station_id = state.store.keys.parse_job_id(ctx["job_id"])
    topic = topic_of_batch(batch_id)
    if state.maybe_finalized(batch_id, deadline_ms):
        got = await state.store.station_input(batch_id, station_id)
        if got.state is None:
            log.info("batch %s: station %s skipped, batch no longer exists", batch_id, station_id)
            return "gone"
        if got.state != "open":
            state.saw_finalized(batch_id)
            metrics.STATIONS_SKIPPED.labels(topic).inc()
            log.info(
                "batch %s: station %s skipped, batch already %s",
                batch_id,
                station_id,
                got.state,
                extra={"batch_id": batch_id, "topic": topic},
            )
            return "skipped"
    attempt = int(ctx.get("job_try") or 1)
    if attempt > MAX_ATTEMPTS:
        return await _give_up(state, batch_id, station_id, attempt, topic)
    job = f"{batch_id}/{station_id}"
    state.running.add(job)
    try:
        return await _run(state, batch_id, station_id, records, budget_ms, topic, attempt)
    finally:
        state.running.discard(job)
        state.done += 1


@functools.cache
def _stations(topic: str, status: str) -> Any:
    return metrics.STATIONS.labels(topic, status)  # cached: .labels() costs a lock and a lookup per call


@functools.cache
def _station_seconds(status: str) -> Any:
    return metrics.STATION_SECONDS.labels(status)


async def _give_up(state: WorkerState, batch_id: str, station_id: str, attempt: int, topic: str) -> str:
    """The station's earlier attempts never finished (the worker died running them): stop trying."""
    error = f"gave up: {attempt - 1} earlier attempt(s) never finished (the worker running them died)"
    outcome = Outcome(status="failed", error=error, worker=state.name, attempt=attempt)
    rec = await _record(state, batch_id, station_id, outcome)
    if rec.status in ("recorded", "complete", "quorum"):
        metrics.STATIONS.labels(topic, "failed").inc()
    log.error("batch %s: station %s %s", batch_id, station_id, error, extra={"batch_id": batch_id, "topic": topic})
    return rec.status


async def _run(
    state: WorkerState,
    batch_id: str,
    station_id: str,
    records: list[dict[str, Any]],
    budget_ms: int | None,
    topic: str,
    attempt: int,
) -> str:
    budget_s = state.settings.station_timeout_s or (budget_ms / 1000 if budget_ms else 5.0)
    outcome = await run_processor(
        state.processor,
        station_id,
        records,
        budget_s=budget_s,
        max_result_bytes=state.settings.max_result_bytes,
        worker=state.name,
        attempt=attempt,
    )
    rec = await _record(state, batch_id, station_id, outcome)
    _station_seconds(outcome.status).observe(outcome.duration_ms / 1000)
    if rec.status in ("recorded", "complete", "quorum"):
        _stations(topic, outcome.status).inc()
    elif rec.status == "late":
        state.saw_finalized(batch_id)
        metrics.LATE_RESULTS.labels(topic).inc()
    _log_recorded(batch_id, station_id, outcome, rec, topic)
    return rec.status
