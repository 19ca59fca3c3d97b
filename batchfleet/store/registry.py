"""The process registry: one heartbeat per live process, read by ``status`` and ``health``."""

from __future__ import annotations

import time
from typing import Any

import orjson

from batchfleet.store.base import StoreBase, aw, text

__all__ = ["ProcessRegistry"]


class ProcessRegistry(StoreBase):
    """``ROLE:HOST:PID`` members with a heartbeat key each (expires when the process stops beating)."""

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
        members = [text(m) for m in await aw(self.redis.zrange(self.keys.procs, 0, -1))]
        if role is not None:
            members = [m for m in members if m.startswith(f"{role}:")]
        if not members:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:  # one GET each: MGET is cross-slot on a cluster
            for m in members:
                pipe.get(self.keys.proc(m))
            values = await pipe.execute()
        return {m: orjson.loads(v) for m, v in zip(members, values, strict=True) if v is not None}
