"""Entry point of one worker process.

The process owns its signals (arq's own handlers are off): the first SIGTERM/SIGINT stops taking
jobs and gives the stations in flight ``BATCHFLEET_WORKER_GRACE_S`` to finish and record their
outcome, then cancels the rest (arq runs a cancelled station again once its in-progress key
expires); a second signal exits at once.  This holds in a Redis outage too.

arq's worker ends when Redis goes away.  ``run_worker`` then starts a fresh arq worker as soon as
Redis answers again (pinged every ``RECONNECT_BACKOFF``, at most 0.5 s apart), so a worker rides out a
Redis restart by itself -- unless it was asked to stop meanwhile.  The stations in flight are not
waited for: the ended arq worker is *retired* -- it takes no job, its stations keep running and
record when they finish (their record is retried), and it is closed once they have -- while the fresh
one claims; the jobs still running count against ``BATCHFLEET_WORKER_MAX_JOBS`` until they end.

Shards: on a single Redis one arq worker serves every shard's queue; on a Redis Cluster one arq
worker per primary serves the shards that primary holds (``workers/nodes.py``).  When one of them
ends (its node went away, or its slots moved in a failover) they all end and a fresh set is built
from the new slot map.  Every arq worker of the process shares one state: store, processor,
heartbeat.  Each has its own Redis client, which the process opens (pinged, with the fleet's retry)
before the arq worker starts and closes once it has ended, whatever ended it (``workers/nodes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq.worker import Worker
from redis.exceptions import RedisError

from batchfleet.errors import StopRequested
from batchfleet.metrics import serve_metrics
from batchfleet.retry import REDIS_UNAVAILABLE, Backoff, describe, log_retry, redis_problem, retry, sleep_unless_stopped
from batchfleet.runtime import freeze_startup_heap, run_until_signal, wait_for_redis
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.workers.fastclaim import StationWorker
from batchfleet.workers.nodes import close_pool, open_pools
from batchfleet.workers.processor import LoadedProcessor, load_processor
from batchfleet.workers.settings import worker_settings
from batchfleet.workers.station import WorkerContext, WorkerState, close_state, open_state

__all__ = ["run_worker", "serve"]

log = logging.getLogger(__name__)
# After the arq worker ended on a Redis error: the wait before a fresh one, and between pings while Redis
# does not answer.  Both capped low, so claiming resumes within about half a second of Redis answering.
RESTART_BACKOFF = Backoff(0.1, 0.5)
RECONNECT_BACKOFF = Backoff(0.05, 0.5)
# What ends an arq worker and calls for a fresh one: REDIS_UNAVAILABLE (batchfleet.retry) and any other
# Redis error arq lets escape after a Redis restart (e.g. a WatchError on a stale pooled connection).
_ENDS_ARQ: tuple[type[BaseException], ...] = (RedisError, OSError, *REDIS_UNAVAILABLE)
_HEALTHY_RUN_S = 60.0  # an arq worker that ran this long before Redis ended it restarts without the earlier backoff
_HEALTH_DELETE_S = 1.0  # the last health-check delete at close, as arq's own client bounded it (not the 5 s connect timeout)
_CANCEL_AGAIN_S = 0.5  # an arq worker still running this long after it was cancelled is cancelled again


async def _finish_jobs(worker: Worker, stop: asyncio.Event, grace_s: float) -> None:
    """Wait for the worker's jobs in flight: until they end, or -- once ``stop`` is set -- for at most
    ``grace_s``; then cancel what is left."""
    tasks = [t for t in worker.tasks.values() if not t.done()]
    stopping = asyncio.ensure_future(stop.wait())
    try:
        pending = set(tasks)
        while pending and not stop.is_set():
            _, pending = await asyncio.wait({*pending, stopping}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stopping)
    finally:
        stopping.cancel()
    pending = {t for t in tasks if not t.done()}
    if pending:
        log.info("finishing %d station(s) in flight (up to %gs)", len(pending), grace_s)
        _, pending = await asyncio.wait(pending, timeout=grace_s)
    if pending:
        log.warning("%d station(s) not finished within %gs: cancelled (arq runs them again later)", len(pending), grace_s)
        for task in pending:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for job_id, task in list(worker.tasks.items()):
        if task.done():
            del worker.tasks[job_id]


async def _close(worker: Worker) -> None:
    """arq's Worker.close without its failure modes in an outage: no Redis call is needed for the
    shutdown hook (heartbeat, store) to run, the pool (ours, from open_pools) is always closed, and
    never under a job's finish that is still running."""
    if worker._pool is None:
        return
    if isinstance(worker, StationWorker):
        await worker.settle_finishes()  # a job cancelled at shutdown leaves its finish running on this pool
    with contextlib.suppress(*_ENDS_ARQ, TimeoutError):  # a cut link: the key expires by itself
        await asyncio.wait_for(worker.pool.delete(worker.health_check_key), _HEALTH_DELETE_S)
    try:
        if worker.on_shutdown is not None:
            await worker.on_shutdown(worker.ctx)
    finally:
        await close_pool(worker.pool)
        worker._pool = None


async def _cancel_until_done(mains: Sequence[asyncio.Future[None]]) -> None:
    """Cancel the arq workers' main tasks and wait until each has ended, cancelling again the ones
    that go on: on Python 3.11 a cancel that lands while redis-py sends a command (under
    ``asyncio.wait_for``, with a socket timeout) is lost when the send completes in the same step, and
    that arq worker goes on polling (seen when a stop comes just as a fresh set starts up)."""
    pending = {m for m in mains if not m.done()}
    while pending:
        for main in pending:
            main.cancel()
        _, pending = await asyncio.wait(pending, timeout=_CANCEL_AGAIN_S)


async def _until_stop_or_failure(mains: Sequence[asyncio.Future[None]], stop: asyncio.Event) -> None:
    """Until ``stop`` is set, an arq worker fails, or every one has ended by itself (burst)."""
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    running: set[asyncio.Future[Any]] = set(mains)
    try:
        while running and not stopping.done():
            done, running = await asyncio.wait({*running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            running.discard(stopping)
            if any(not d.cancelled() and d.exception() is not None for d in done if d is not stopping):
                return
    finally:
        stopping.cancel()


class _Retired:
    """arq workers that a Redis error ended, finishing their jobs in flight in the background (each is
    closed once its jobs have ended, or ``stop`` and the grace have passed) while a fresh set claims."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.drains: set[asyncio.Task[None]] = set()

    def in_flight(self) -> int:
        """Jobs of retired workers still running: they take slots of the fresh set's max_jobs."""
        return sum(1 for w in self.workers for task in w.tasks.values() if not task.done())

    def add(self, workers: list[Worker], mains: Sequence[asyncio.Future[None]], stop: asyncio.Event, grace_s: float) -> None:
        self.workers.extend(workers)
        drain = asyncio.create_task(self._drain(workers, mains, stop, grace_s), name="retired arq workers")
        self.drains.add(drain)
        drain.add_done_callback(self.drains.discard)

    async def _drain(
        self, workers: list[Worker], mains: Sequence[asyncio.Future[None]], stop: asyncio.Event, grace_s: float
    ) -> None:
        try:
            await _cancel_until_done(mains)
            await asyncio.gather(*(_finish_jobs(w, stop, grace_s) for w in workers))
        finally:
            await _end(workers, mains)
            self.workers = [w for w in self.workers if w not in workers]

    async def wait(self) -> None:
        while self.drains:
            await asyncio.gather(*self.drains, return_exceptions=True)


async def _end(workers: list[Worker], mains: Sequence[asyncio.Future[None]]) -> None:
    for main in mains:
        main.cancel()
    for w in workers:
        for task in w.tasks.values():
            task.cancel()
        await asyncio.gather(*w.tasks.values(), return_exceptions=True)
        w.tasks.clear()
        await _close(w)


async def _run_once(workers: list[Worker], stop: asyncio.Event, grace_s: float, retired: _Retired) -> BaseException | None:
    """Run the arq workers until one ends or ``stop`` is set; the Redis error that ended one, if any.
    On a stop they take no more jobs and drain their stations in flight (within the grace); when Redis
    ended one, the set is handed to ``retired`` with its stations still running."""
    mains = [asyncio.ensure_future(w.async_run()) for w in workers]
    handed_over = False
    try:
        await _until_stop_or_failure(mains, stop)
        error = next((m.exception() for m in mains if m.done() and not m.cancelled() and m.exception() is not None), None)
        if error is not None and not isinstance(error, _ENDS_ARQ):
            raise error
        for w in workers:  # one ended, or we were asked to stop: this set takes no more jobs
            w.allow_pick_jobs = False
        if error is not None:
            level = logging.WARNING if redis_problem(error) == "unavailable" else logging.ERROR
            in_flight = sum(1 for w in workers for task in w.tasks.values() if not task.done())
            log.log(
                level,
                "the arq worker ended: redis failed (%s); %d station job(s) in flight keep running, claiming again as soon as"
                " redis answers",
                describe(error),
                in_flight,
            )
            if not stop.is_set():
                retired.add(workers, mains, stop, grace_s)
                handed_over = True
                return error
        await asyncio.gather(*(_finish_jobs(w, stop, grace_s) for w in workers))
        await _cancel_until_done(mains)
        return error
    finally:
        if not handed_over:
            await _end(workers, mains)


async def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    stop: asyncio.Event | None = None,
    started: list[Worker] | None = None,
    own_process: bool = False,
    processor: LoadedProcessor | None = None,
) -> None:
    """Run arq workers until ``stop`` is set (or, with ``burst``, every queue is empty), replacing the
    set that a Redis outage (or a cluster failover) ends.  ``own_process``: the workers are this
    process's service, so its start-up heap (the processor loaded) is frozen out of the GC's way.
    ``processor``: set up already (else open_state loads and sets it up, and tears it down at the end)."""
    stop = stop or asyncio.Event()
    try:
        state = await retry(lambda: open_state(settings, processor), what="worker: starting", stop=stop)
    except StopRequested:
        return
    if own_process:
        freeze_startup_heap()
    try:
        await _serve_shards(settings, state, stop, burst=burst, started=started)
    finally:
        await close_state(state)


async def _serve_shards(
    settings: Settings, state: WorkerState, stop: asyncio.Event, *, burst: bool, started: list[Worker] | None
) -> None:
    async def attach(ctx: WorkerContext) -> None:
        ctx["batchfleet"] = state

    retired = _Retired()
    try:
        await _serve_until_stop(settings, state, stop, attach, burst=burst, started=started, retired=retired)
    finally:
        await retired.wait()


async def _serve_until_stop(
    settings: Settings,
    state: WorkerState,
    stop: asyncio.Event,
    attach: Callable[[WorkerContext], Awaitable[None]],
    *,
    burst: bool,
    started: list[Worker] | None,
    retired: _Retired,
) -> None:
    failures = 0
    while not stop.is_set():
        try:
            workers = await retry(
                lambda: _station_workers(settings, state, attach, burst, retired.in_flight),
                what="worker: mapping shards",
                stop=stop,
                backoff=RECONNECT_BACKOFF,
            )
        except StopRequested:
            return
        if started is not None:
            started.extend(workers)
        began = time.monotonic()
        error = await _run_once(workers, stop, settings.worker_grace_s, retired)
        if error is None or stop.is_set():
            return
        failures = 1 if time.monotonic() - began > _HEALTHY_RUN_S else failures + 1
        delay_s = RESTART_BACKOFF.delay_s(failures)
        log_retry("worker: restarting the arq worker", error, delay_s)
        try:
            await sleep_unless_stopped(delay_s, stop)
        except StopRequested:
            return


async def _station_workers(
    settings: Settings,
    state: WorkerState,
    attach: Callable[[WorkerContext], Awaitable[None]],
    burst: bool,
    carried: Callable[[], int],
) -> list[Worker]:
    """One StationWorker per group of shards (all of them on a single Redis; per primary on a cluster),
    each on a pinged client of ours: arq's create_pool is never called, so arq's own retries (5 x 1 s,
    deaf to stop) are not used either."""
    options = worker_settings(settings) | {"burst": burst, "handle_signals": False, "on_startup": attach, "on_shutdown": None}
    del options["queue_name"], options["redis_settings"]
    pools = await open_pools(settings, state.store, name="batchfleet-worker-arq")
    try:
        return [
            StationWorker(keys=state.store.keys, shards=shards, redis_pool=pool, carried=carried, **options)
            for pool, shards in pools
        ]
    except BaseException:
        for pool, _ in pools:
            await close_pool(pool)
        raise


async def _serve(settings: Settings, stop: asyncio.Event, burst: bool, processor: LoadedProcessor) -> None:
    await processor.setup()  # before the heartbeat: health is not ready until the model is set up
    try:
        async with BatchStore.from_settings(settings, name="batchfleet-worker") as store:
            await wait_for_redis(store, stop, settings.redis_location())
        await run_worker(settings, burst=burst, stop=stop, own_process=True, processor=processor)
    finally:
        await processor.teardown()


def serve(settings: Settings, *, burst: bool = False) -> None:
    processes = settings.worker_process_count()
    if processes > 1:  # BATCHFLEET_WORKER_PROCESSES / --processes: a supervisor of worker processes
        from batchfleet.workers.supervisor import supervise

        supervise(settings, processes, burst=burst)
        return
    processor = load_processor(settings.processor)  # a bad BATCHFLEET_PROCESSOR fails before anything starts
    serve_metrics(settings.metrics_port, settings.metrics_host)
    run_until_signal(lambda stop: _serve(settings, stop, burst, processor), grace_s=settings.worker_grace_s)
