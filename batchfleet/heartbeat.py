"""Per-process heartbeats: a key per process with a short TTL, refreshed every few seconds.

``batchfleet health ROLE`` reads them; so does ``batchfleet status``.  Unlike arq's shared,
hourly health key, a dead process disappears within ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from batchfleet.retry import REDIS_UNAVAILABLE, describe
from batchfleet.store import BatchStore

__all__ = ["HEARTBEAT_INTERVAL_S", "HEARTBEAT_TTL_S", "every", "heartbeat", "process_member"]

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 10


def process_member(role: str) -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


async def every(interval_s: float, stop: asyncio.Event, step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``step`` now and then every ``interval_s`` until ``stop`` is set.  A step that fails because
    Redis is away is logged at debug level (the role's own loop reports the outage) and tried again
    next time; any other failure is a bug, logged at error level with its traceback, and also tried
    again (a heartbeat that silently stops would make a live process vanish from status and health)."""
    while not stop.is_set():
        try:
            await step()
        except REDIS_UNAVAILABLE as exc:
            log.debug("%s failed: %s", what, describe(exc))
        except Exception:
            log.exception("%s failed unexpectedly; trying again in %gs", what, interval_s)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass


async def heartbeat(store: BatchStore, member: str, info: Callable[[], dict[str, Any]], stop: asyncio.Event) -> None:
    """Beat until ``stop`` is set, then remove the heartbeat (a clean exit is not a dead process)."""
    started = time.time()

    async def beat() -> None:  # Redis away: the heartbeat lapses, which is the truth
        await store.beat(member, {"started": round(started, 3), "pid": os.getpid(), **info()}, HEARTBEAT_TTL_S)

    await every(HEARTBEAT_INTERVAL_S, stop, beat, "heartbeat")
    try:
        await store.forget_process(member)
    except REDIS_UNAVAILABLE as exc:  # it expires by itself within HEARTBEAT_TTL_S
        log.debug("could not remove heartbeat: %s", describe(exc))
