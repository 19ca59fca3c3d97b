"""Entry point of one worker process.

The process owns its signals (arq's own handlers are off): the first SIGTERM/SIGINT stops taking
jobs and gives the stations in flight ``BATCHFLEET_WORKER_GRACE_S`` to finish and record their
outcome, then cancels the rest (arq runs a cancelled station again once its in-progress key
expires); a second signal exits at once.  This holds in a Redis outage too.

arq's worker ends when Redis goes away.  ``run_worker`` lets the stations in flight finish (their
record is retried), then starts a fresh arq worker with backoff, so a worker rides out a Redis
restart by itself -- unless it was asked to stop meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from arq.worker import Worker
from redis.exceptions import RedisError

from batchfleet.errors import StopRequested
from batchfleet.metrics import serve_metrics
from batchfleet.retry import Backoff, describe, log_retry, redis_problem, sleep_unless_stopped
from batchfleet.runtime import run_until_signal, wait_for_redis
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.workers.fastclaim import StationWorker
from batchfleet.workers.processor import load_processor
from batchfleet.workers.settings import worker_settings

__all__ = ["run_worker", "serve"]

log = logging.getLogger(__name__)
RESTART_BACKOFF = Backoff(0.5, 10.0)
# What ends an arq worker and calls for a fresh one: REDIS_UNAVAILABLE (batchfleet.retry) and any other
# Redis error arq lets escape after a Redis restart (e.g. a WatchError on a stale pooled connection).
_ENDS_ARQ: tuple[type[BaseException], ...] = (RedisError, OSError)
_HEALTHY_RUN_S = 60.0  # an arq worker that ran this long before Redis ended it restarts without the earlier backoff


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
    shutdown hook (heartbeat, store) to run, and the pool is always closed."""
    if worker._pool is None:
        return
    with contextlib.suppress(*_ENDS_ARQ):
        await worker.pool.delete(worker.health_check_key)
    try:
        if worker.on_shutdown is not None:
            await worker.on_shutdown(worker.ctx)
    finally:
        with contextlib.suppress(*_ENDS_ARQ):
            await worker.pool.close(close_connection_pool=True)
        worker._pool = None


async def _run_once(worker: Worker, stop: asyncio.Event, grace_s: float) -> BaseException | None:
    """Run one arq worker until it ends or ``stop`` is set; the Redis error that ended it, if any."""
    main = asyncio.ensure_future(worker.async_run())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({main, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():  # asked to stop: take no more jobs, drain, then end the poll loop
            worker.allow_pick_jobs = False
            await _finish_jobs(worker, stop, grace_s)
            main.cancel()
        await asyncio.wait({main})
        error = None if main.cancelled() else main.exception()
        if error is not None and not isinstance(error, _ENDS_ARQ):
            raise error
        if error is not None:
            level = logging.WARNING if redis_problem(error) == "unavailable" else logging.ERROR
            log.log(level, "the arq worker ended: redis failed (%s); %d station(s) in flight", describe(error), len(worker.tasks))
        await _finish_jobs(worker, stop, grace_s)
        return error
    finally:
        stopping.cancel()
        main.cancel()
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.tasks.clear()
        await _close(worker)


async def run_worker(
    settings: Settings, *, burst: bool = False, stop: asyncio.Event | None = None, started: list[Worker] | None = None
) -> None:
    """Run arq workers until ``stop`` is set (or, with ``burst``, the queue is empty), replacing each
    one that a Redis outage ends."""
    stop = stop or asyncio.Event()
    failures = 0
    while not stop.is_set():
        options = worker_settings(settings) | {"burst": burst, "handle_signals": False}
        options["redis_settings"].conn_retries = 0  # one retry policy: ours (arq's own would wait 5 x 1 s, deaf to stop)
        worker = StationWorker(**options)
        if started is not None:
            started.append(worker)
        began = time.monotonic()
        error = await _run_once(worker, stop, settings.worker_grace_s)
        if error is None or stop.is_set():
            return
        failures = 1 if time.monotonic() - began > _HEALTHY_RUN_S else failures + 1
        delay_s = RESTART_BACKOFF.delay_s(failures)
        log_retry("worker: restarting the arq worker", error, delay_s)
        try:
            await sleep_unless_stopped(delay_s, stop)
        except StopRequested:
            return


async def _serve(settings: Settings, stop: asyncio.Event, burst: bool) -> None:
    async with BatchStore.from_settings(settings, name="batchfleet-worker") as store:
        await wait_for_redis(store, stop, settings.redis_location())
    await run_worker(settings, burst=burst, stop=stop)


def serve(settings: Settings, *, burst: bool = False) -> None:
    load_processor(settings.processor)  # a bad BATCHFLEET_PROCESSOR fails before anything starts
    serve_metrics(settings.metrics_port)
    run_until_signal(lambda stop: _serve(settings, stop, burst), grace_s=settings.worker_grace_s)
