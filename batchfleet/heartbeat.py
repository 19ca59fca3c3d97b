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

from batchfleet.store import BatchStore

__all__ = ["HEARTBEAT_INTERVAL_S", "HEARTBEAT_TTL_S", "every", "heartbeat", "process_member"]

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 10


def process_member(role: str) -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


async def every(interval_s: float, stop: asyncio.Event, step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``step`` now and then every ``interval_s`` until ``stop`` is set.  A step that fails (Redis
    away) is logged at debug level and simply tried again next time."""
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            log.debug("%s failed: %s", what, exc)
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
    except Exception as exc:
        log.debug("could not remove heartbeat: %s", exc)
