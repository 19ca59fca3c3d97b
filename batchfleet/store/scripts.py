"""The Lua transitions: loaded from ``batchfleet/lua/*.lua`` with the shared prelude, registered once
per client, and their replies checked in one way.

Each script is one state transition with its KEYS/ARGV contract on top of its file.  Before
registering, the store prepends the constants of :data:`LUA_CONSTANTS` (rendered as Lua locals) and
``lua/lib/prelude.lua`` (``redis_now_ms()``), so no script repeats the Redis-time arithmetic or a
magic number.  redis-py's script objects reload themselves after a Redis restart (NOSCRIPT).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import cache
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import PipelineCommand
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

from batchfleet.errors import StoreError

__all__ = ["LUA_CONSTANTS", "RATE_OUTCOMES", "RATE_SLOTS", "RATE_SLOT_MS", "SCRIPT_NAMES", "Scripts", "reply_kind", "script_source"]

LUA_CONSTANTS: dict[str, int] = {
    "JOB_SCORE_SKEW_MS": 600_000,  # job scores are Redis time minus 10 minutes (clock-skew allowance)
    "BATCH_INDEX_MAX": 100_000,  # ids kept in the batch index
    "LIST_LAST_INDEX": 99,  # the wake-up and recent lists keep 100 entries
    "RATE_SLOT_MS": 10_000,  # bf:rates (the console's last-hour charts): one slot per 10 s of Redis time ...
    "RATE_SLOTS": 360,  # ... and 360 of them, one hour
}
RATE_SLOT_MS = LUA_CONSTANTS["RATE_SLOT_MS"]
RATE_SLOTS = LUA_CONSTANTS["RATE_SLOTS"]
RATE_OUTCOMES = ("ok", "failed", "empty", "missing")  # the station counts ack_upload adds to bf:rates
_NOSCRIPT_TRIES = 3
SCRIPT_NAMES = (
    "create_batch",
    "quarantine_message",
    "claim_jobs",
    "record_outcome",
    "split_group",
    "claim_batch",
    "freeze_payload",
    "ack_upload",
    "fail_upload",
    "replay_batch",
)


def _read(name: str) -> str:
    return resources.files("batchfleet").joinpath("lua", name).read_text(encoding="utf-8")


@cache
def script_source(name: str) -> str:
    """The text registered for ``lua/NAME.lua``: constants, prelude, then the script itself."""
    constants = "".join(f"local {key} = {value}\n" for key, value in LUA_CONSTANTS.items())
    return constants + _read("lib/prelude.lua") + _read(f"{name}.lua")


class Scripts:
    """Every transition script, registered on one client."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster) -> None:
        register = cast(Any, client).register_script  # typed for Redis only; RedisCluster has it too
        self._scripts = {name: register(script_source(name)) for name in SCRIPT_NAMES}
        self._client = client

    async def run(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a script.  redis-py reloads a script Redis does not know (NOSCRIPT) and tries once
        more; during a Sentinel failover the load and the retry can reach different servers, so a
        second NOSCRIPT is retried here too (a script that did not run wrote nothing)."""
        script: AsyncScript = self._scripts[name]
        for _ in range(_NOSCRIPT_TRIES - 1):
            try:
                return await script(keys=list(keys), args=list(args))
            except NoScriptError:
                continue
        return await script(keys=list(keys), args=list(args))

    async def run_and_wait(
        self, name: str, keys: Sequence[Any], args: Sequence[Any], replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """Run a script, then ``WAIT replicas timeout_ms`` on the same connection (one pipeline), so
        the WAIT covers the script's writes.  Returns the script's reply and how many replicas
        acknowledged them.  On a Redis Cluster both go to the primary that holds the keys' slot."""
        if isinstance(self._client, aioredis.RedisCluster):
            return await self._run_and_wait_on_node(self._client, name, keys, args, replicas, timeout_ms)
        async with self._client.pipeline(transaction=False) as pipe:
            await self._scripts[name](keys=list(keys), args=list(args), client=pipe)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            reply, acked = await pipe.execute()
        return reply, int(acked)

    async def _run_and_wait_on_node(
        self, client: aioredis.RedisCluster, name: str, keys: Sequence[Any], args: Sequence[Any], replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """The cluster client has no keyless WAIT on a chosen connection: send EVALSHA + WAIT as one
        pipeline to the node that holds the slot (its connection pool, one connection).  A stale
        slot map (MOVED after a failover) refreshes the map and is raised as TryAgainError: the
        caller retries, like during any failover."""
        script: AsyncScript = self._scripts[name]
        node = client.get_node_from_key(keys[0])
        if node is None:
            raise TryAgainError(f"no node holds the slot of {keys[0]!r} yet")  # type: ignore[no-untyped-call]
        for _ in range(_NOSCRIPT_TRIES):
            commands = [
                PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
                PipelineCommand(1, "WAIT", replicas, timeout_ms),
            ]
            await node.execute_pipeline(commands)
            reply, acked = commands[0].result, commands[1].result
            if isinstance(reply, NoScriptError):
                await node.execute_command("SCRIPT", "LOAD", script.script)
                continue
            if isinstance(reply, MovedError | AskError):
                await client.nodes_manager.initialize()
                raise TryAgainError(f"slot of {keys[0]!r} moved ({reply}); the slot map was refreshed")  # type: ignore[no-untyped-call]
            for result in (reply, acked):
                if isinstance(result, BaseException):
                    raise result
            return reply, int(cast(int, acked))
        raise NoScriptError(f"{name}.lua could not be loaded on {node.name}")


def reply_kind(script: str, reply: Any, kinds: Collection[str]) -> str:
    """The first element of a script's reply, checked against the kinds its contract documents."""
    head = reply[0] if isinstance(reply, list) and reply else None
    kind = head.decode() if isinstance(head, bytes) else head
    if kind not in kinds:
        raise StoreError(f"{script}.lua returned {reply!r} (expected one of {sorted(kinds)})")
    return str(kind)
