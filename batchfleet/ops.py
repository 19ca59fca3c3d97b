"""Operator commands that read the fleet's state: health (status and inspect build on it)."""

from __future__ import annotations

import socket

from batchfleet.settings import Settings
from batchfleet.store import BatchStore

__all__ = ["check_health", "open_store", "replay"]


def open_store(settings: Settings, name: str = "batchfleet-cli") -> BatchStore:
    return BatchStore.from_url(settings.redis_url.get_secret_value(), prefix=settings.key_prefix,
                               queue_name=settings.queue_name, name=name)  # fmt: skip


async def replay(settings: Settings, batch_ids: list[str], replay_all: bool) -> list[tuple[str, bool, str]]:
    """Re-queue dead-lettered batches; (batch id, replayed, previous state) for each."""
    async with open_store(settings) as store:
        ids = await store.dead_batch_ids() if replay_all else batch_ids
        results = []
        for bid in ids:
            ok, state = await store.replay(bid)
            results.append((bid, ok, state))
        return results


async def check_health(settings: Settings, role: str, name: str | None) -> tuple[bool, str]:
    """(healthy, message): a ROLE process on this host (or HOST:PID ``name``) has a live heartbeat."""
    want = f"{role}:{name}" if name else f"{role}:{socket.gethostname()}:"
    try:
        async with open_store(settings, "batchfleet-health") as store:
            live = await store.live_processes(role)
    except Exception as exc:
        return False, f"unhealthy: cannot read heartbeats from Redis: {type(exc).__name__}: {exc}"
    matches = [m for m in live if (m == want if name else m.startswith(want))]
    if not matches:
        return False, f"unhealthy: no live heartbeat for {want}*"
    return True, "healthy: " + ", ".join(f"{m} ({live[m].get('doing', '')})" for m in matches)
