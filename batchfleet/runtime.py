"""Process lifecycle shared by the long-running roles.

- :func:`run_until_signal`: the first SIGTERM/SIGINT sets the stop event (graceful drain), the second
  exits at once; a drain still running ``grace_s`` (+ a small margin) after the first signal is
  cancelled, so a process always exits within its grace, even when Redis or Kafka is away.
- :func:`wait_for_redis`: the start-up check.  Redis that does not answer is waited for with backoff;
  refused credentials and a certificate that does not verify are configuration errors (exit 2).
- :func:`start_kafka`: start an aiokafka client, waiting for Kafka with backoff; a client whose start
  failed is closed before the next attempt (no "Unclosed" client warnings).
- :func:`bounded`: run a shutdown step with a time limit (closing a Kafka client during an outage
  can otherwise wait for the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from batchfleet.errors import ConfigError, StopRequested
from batchfleet.retry import REDIS_UNAVAILABLE, describe, redis_problem, retry
from batchfleet.store import BatchStore

__all__ = ["bounded", "freeze_startup_heap", "redis_config_error", "run_until_signal", "start_kafka", "wait_for_redis"]

log = logging.getLogger(__name__)
GRACE_MARGIN_S = 2.0  # after grace_s: the drain is cancelled; this much later the process exits regardless
C = TypeVar("C", bound="_KafkaClient")


class _KafkaClient(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def _watchdog(stop: asyncio.Event, task: asyncio.Future[None], grace_s: float, cancelled: list[bool]) -> None:
    await stop.wait()
    await asyncio.sleep(grace_s + GRACE_MARGIN_S)
    if task.done():
        return
    log.warning("still draining %.0fs after the stop signal; cancelling what is left", grace_s + GRACE_MARGIN_S)
    cancelled.append(True)
    task.cancel()
    await asyncio.sleep(GRACE_MARGIN_S)
    if not task.done():
        log.error("did not stop after cancelling the drain; exiting now")
        os._exit(1)


async def _main(serve: Callable[[asyncio.Event], Awaitable[None]], grace_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", sig.name)
            os._exit(128 + sig.value)
        log.info("%s received: draining for up to %gs (send it again to exit at once)", sig.name, grace_s)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    task = asyncio.ensure_future(serve(stop))
    cancelled: list[bool] = []
    watchdog = asyncio.ensure_future(_watchdog(stop, task, grace_s, cancelled))
    try:
        await task
    except StopRequested:
        log.info("stopped before start-up finished")
    except asyncio.CancelledError:
        if not cancelled:
            raise
        log.warning("stopped; the drain was cut short after %gs", grace_s)
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog


def freeze_startup_heap() -> None:
    """Take what start-up left alive (imported modules, settings, the processor and its libraries) out
    of the garbage collector's reach, once per service process.  The full collections a long-lived
    process runs now and again then scan only what was allocated since: in a worker they paused the
    event loop for 30-70 ms every few thousand stations (the tail of completion -> upload latency);
    after this they are gone from its profile."""
    gc.collect()
    gc.freeze()


def run_until_signal(serve: Callable[[asyncio.Event], Awaitable[None]], *, grace_s: float = 10.0) -> None:
    asyncio.run(_main(serve, grace_s))


async def wait_for_redis(store: BatchStore, stop: asyncio.Event | None, where: str) -> None:
    """Return once Redis answers.  An outage is waited for (a line per attempt, capped backoff);
    refused credentials or a failed TLS handshake raise ConfigError; ``stop`` raises StopRequested."""

    async def probe() -> None:
        try:
            await store.server_time_ms()
        except REDIS_UNAVAILABLE as exc:
            misconfigured = redis_config_error(exc, where)
            if misconfigured is not None:
                raise misconfigured from exc
            raise

    await retry(probe, what=f"waiting for redis at {where}", stop=stop)


def redis_config_error(exc: BaseException, where: str) -> ConfigError | None:
    """The configuration error a Redis failure reveals (refused credentials, a failed TLS handshake),
    or None when Redis is merely unavailable."""
    problem = redis_problem(exc)
    if problem == "credentials":
        return ConfigError(f"BATCHFLEET_REDIS_URL: redis at {where} refused the credentials: {describe(exc)}")
    if problem == "tls":
        return ConfigError(f"BATCHFLEET_REDIS_URL, BATCHFLEET_REDIS_TLS_CA_FILE: TLS with redis at {where} failed: {describe(exc)}")
    return None


async def start_kafka(make: Callable[[], C], *, what: str, stop: asyncio.Event | None) -> C:
    """A started aiokafka client from ``make()``; while Kafka is unreachable, retried with backoff."""

    async def attempt() -> C:
        client = make()
        try:
            await client.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await client.stop()
            raise
        return client

    return await retry(attempt, what=what, service="kafka", stop=stop)


async def bounded(step: Awaitable[None], timeout_s: float, what: str) -> None:
    """Run a shutdown step for at most ``timeout_s``; a failure or overrun is logged, not raised."""
    try:
        await asyncio.wait_for(step, timeout=timeout_s)
    except TimeoutError:
        log.warning("%s did not finish within %gs; going on", what, timeout_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("%s was cancelled by the client library; going on", what)  # aiokafka, during an outage
    except Exception as exc:
        log.warning("%s failed: %s", what, describe(exc))
