"""Entry point of one worker process.

arq's worker exits when Redis goes away; ``run_worker`` starts a fresh one with backoff, so a
worker rides out a Redis restart by itself.  Station jobs in flight during the outage are re-run
by arq once their in-progress key expires (see workers/settings.py).  SIGTERM is arq's: stop
picking jobs, finish in-flight ones within ``BATCHFLEET_WORKER_GRACE_S``, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq.worker import Worker
from redis.exceptions import RedisError

from batchfleet.metrics import serve_metrics
from batchfleet.settings import Settings
from batchfleet.workers.fastclaim import StationWorker
from batchfleet.workers.settings import worker_settings

__all__ = ["run_worker", "serve"]

log = logging.getLogger(__name__)
# Any Redis error that escapes arq ends its worker; a restart of Redis can surface as a
# ConnectionError, a TimeoutError, or a WatchError on a stale pooled connection.
_REDIS_DOWN = (RedisError, ConnectionError, OSError)


async def _run_once(worker: Worker) -> bool:
    """Run one arq worker to its end; True when it ended because Redis went away."""
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled ourselves
        return False  # arq's signal handler cancelled its main task: a normal shutdown
    except _REDIS_DOWN as exc:
        log.warning("redis unavailable (%s); restarting the worker", exc)
        return True
    finally:
        with contextlib.suppress(*_REDIS_DOWN):
            await worker.close()
    return False


async def run_worker(
    settings: Settings, *, burst: bool = False, handle_signals: bool = True, started: list[Worker] | None = None
) -> None:
    """Run arq workers until a normal shutdown, replacing each one that Redis outages end."""
    delay = 0.5
    while True:
        worker = StationWorker(**(worker_settings(settings) | {"burst": burst, "handle_signals": handle_signals}))
        if started is not None:
            started.append(worker)
        if not await _run_once(worker):
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


def serve(settings: Settings, *, burst: bool = False) -> None:
    serve_metrics(settings.metrics_port)
    asyncio.run(run_worker(settings, burst=burst))
