"""One real redis-server for every contract test of the session; each case starts from an empty
database (FLUSHDB) and sees the script calls it makes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.commands.core import AsyncScript

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import RedisServer
from tests.contract.harness import Ctx, ScriptCall, script_name


@pytest.fixture(scope="session")
def contract_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def contract_store(contract_redis: RedisServer) -> AsyncIterator[BatchStore]:
    store = BatchStore.from_url(contract_redis.url, name="contract")
    yield store
    await store.aclose()


@pytest.fixture
async def ctx(contract_store: BatchStore, monkeypatch: pytest.MonkeyPatch) -> Ctx:
    """A clean database, and every Lua script call recorded (script, keys, args, raw reply)."""
    await contract_store.redis.flushdb()
    seen = Ctx(contract_store)
    call = AsyncScript.__call__

    async def spy(script: AsyncScript, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        reply = await call(script, keys=keys, args=args, client=client)
        seen.calls.append(ScriptCall(script_name(script.script), list(keys or []), list(args or []), reply))
        return reply

    monkeypatch.setattr(AsyncScript, "__call__", spy)
    return seen
