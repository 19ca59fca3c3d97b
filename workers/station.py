"""What a worker process keeps between jobs, and how it records outcomes with patience.

One ``WorkerState`` per worker process: the settings, the store, the user's processor, this worker's
estimate of Redis time (for the "may this batch be finalized already?" check before running a job),
the batches it saw finalized, and what it is running (its heartbeat shows it).  The job functions
live in workers/jobs.py, the concurrent run of a job's stations in workers/group.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

from batchfleet.heartbeat import every, heartbeat, process_member
from batchfleet.models import Outcome, RecordedOutcomes
from batchfleet.retry import Backoff, retry
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.workers.processor import LoadedProcessor, load_processor, make_runners
from batchfleet.workers.runners import Runners
from batchfleet.workers.slots import Slots

__all__ = [
    "JOB_SHAPES",
    "WorkerContext",
    "WorkerState",
    "close_state",
    "open_state",
    "patiently",
    "record",
    "shutdown",
    "startup_with",
]

log = logging.getLogger(__name__)
RECORD_BACKOFF = Backoff(0.05, 2.0)
RECORD_ATTEMPTS = 13  # about 12 s of retrying (jittered waits of 0.05 s doubling to 2 s)
MAX_ATTEMPTS = 2  # a station whose attempts killed the worker this often is recorded failed, not run again
CLOCK_EVERY_S = 30.0  # how often a worker re-measures its offset to Redis time
FINALIZED_CACHE = 4096  # batches this worker saw finalized (stations of them are checked before running)
# The job shapes this worker runs, in its heartbeat: a dispatcher queues group jobs only while every live
# worker lists "group" (a worker of an earlier release runs one-station jobs only).
JOB_SHAPES = ("group", "station")
T = TypeVar("T")


@dataclass
class WorkerState:
    settings: Settings
    store: BatchStore
    processor: LoadedProcessor
    name: str
    slots: Slots = field(default_factory=Slots)
    own_processor: bool = False  # set up by open_state: torn down by close_state
    runners: Runners | None = None  # with a concurrency limit: the threads of sync calls (workers/runners.py)
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
        return {"doing": doing, "running": sorted(self.running)[:10], "done": self.done, "job_shapes": list(JOB_SHAPES)}


class WorkerContext(TypedDict, total=False):
    """arq's ``ctx`` as batchfleet uses it."""

    redis: Any
    job_id: str
    job_try: int
    score: int
    batchfleet: WorkerState


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def open_state(settings: Settings, processor: LoadedProcessor | None = None) -> WorkerState:
    """What every station job of this process shares: the store, the processor, the heartbeat.
    ``processor``: one set up already (``batchfleet worker`` sets it up before Redis is reached);
    without it the processor is loaded and set up here, before the heartbeat (health) starts."""
    own = processor is None
    if processor is None:
        processor = load_processor(settings.processor)
        await processor.setup()
    store = BatchStore.from_settings(settings, name="batchfleet-worker")
    try:
        await store.check_layout()
        state = WorkerState(settings, store, processor, worker_name(), Slots(settings.worker_concurrency), own)
        if settings.worker_concurrency:
            state.runners = make_runners(settings.worker_concurrency)
    except BaseException:
        await store.aclose()
        if own:
            await processor.teardown()
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
    if state.runners is not None:
        state.runners.close()
    if state.own_processor:
        await state.processor.teardown()


async def startup_with(ctx: WorkerContext, settings: Settings) -> None:
    """arq ``on_startup`` of a plain ``arq batchfleet.workers.WorkerSettings`` worker."""
    ctx["batchfleet"] = await open_state(settings)


async def shutdown(ctx: WorkerContext) -> None:
    state = ctx.get("batchfleet")
    if state is not None:
        await close_state(state)


async def _track_clock(state: WorkerState) -> None:
    """Keep ``redis_offset_ms`` current (the deadline check before a job runs compares in Redis time);
    while Redis is away the last offset stays."""

    async def measure() -> None:
        before = time.time()
        server_ms = await state.store.server_time_ms()
        state.redis_offset_ms = server_ms - (before + time.time()) * 500

    await every(CLOCK_EVERY_S, state.stop, measure, "reading Redis time")


async def patiently(op: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a Redis operation with patience: a Redis blip must not lose a computed outcome.  After
    RECORD_ATTEMPTS the error ends the job (arq runs it again); a shutdown cancels the wait after its grace."""
    return await retry(op, what=what, backoff=RECORD_BACKOFF, attempts=RECORD_ATTEMPTS)


async def record(
    state: WorkerState, batch_id: str, outcomes: Sequence[tuple[str, Outcome]], incarnation: str = ""
) -> RecordedOutcomes:
    """Record outcomes of stations of one batch's ``incarnation`` (one script call), with patience."""
    return await patiently(
        lambda: state.store.record_outcomes(batch_id, outcomes, incarnation), f"recording {len(outcomes)} of {batch_id}"
    )
