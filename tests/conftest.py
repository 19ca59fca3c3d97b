"""Shared fixtures: a real Kafka-protocol broker per session, a real redis-server per test.

Nothing here skips: a missing binary is a hard error, under CI and locally alike.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

import hypothesis  # noqa: F401  (imported before any test runs: its late import trips a CPython 3.11 AST bug)
import pytest

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics

_topic_counter = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[KafkaBroker]:
    b = KafkaBroker().start()
    yield b
    b.stop()


@pytest.fixture
def redis_server(tmp_path: object) -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[BatchStore]:
    s = BatchStore.from_url(redis_server.url, name="test")
    yield s
    await s.aclose()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (topic names contain '-', like the real ones)."""
    base = request.node.name.replace("_", "-").replace("[", "-").replace("]", "")[:40]
    return f"T-{base}-{os.getpid()}-{next(_topic_counter)}"


@pytest.fixture
def make_topic(broker: KafkaBroker, topic_name: str):  # type: ignore[no-untyped-def]
    async def make(partitions: int = 1, suffix: str = "") -> str:
        name = topic_name + suffix
        await create_topics(broker.bootstrap, [name], partitions=partitions)
        return name

    return make
