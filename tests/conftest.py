"""Shared fixtures: a real Kafka-protocol broker per session, a real redis-server per test, and a
real 3-primary Redis Cluster per session (tests on it are isolated by their own key prefix).

Nothing here skips: a missing binary is a hard error, under CI and locally alike.  The run fails when
a test leaves a process it started alive, or a file in the temporary directory (tests/leaks.py).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

import hypothesis  # noqa: F401  (imported before any test runs: its late import trips a CPython 3.11 AST bug)
import pytest

from batchfleet.store import BatchStore
from batchfleet_dev.cluster import RedisCluster
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics
from tests.integration.fleet import TEST_SHARDS, RedisTarget
from tests.leaks import RunGuard

_topic_counter = itertools.count()
_prefix_counter = itertools.count()
_GUARD = pytest.StashKey[RunGuard]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_GUARD] = RunGuard.start()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Set up first, so torn down last: after every other fixture of the session has stopped."""
    yield
    guard = request.config.stash[_GUARD]
    problems = guard.leftovers()
    if problems:
        guard.keep = True
        guard.stop_leftover_processes()
        pytest.fail("the tests left behind:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the run's temporary directory (kept, and named, when something failed)."""
    guard = session.config.stash.get(_GUARD, None)
    if guard is None:
        return
    kept = guard.finish(keep=guard.keep or exitstatus != pytest.ExitCode.OK)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if kept and reporter is not None:
        reporter.write_line(f"temporary files of this run kept in {guard.tempdir}")


@pytest.fixture(scope="session")
def broker() -> Iterator[KafkaBroker]:
    b = KafkaBroker().start()
    yield b
    b.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """3 primaries, no replicas; shared by the session's cluster tests (each uses its own prefix)."""
    cluster = RedisCluster(primaries=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def target(request: pytest.FixtureRequest) -> Iterator[RedisTarget]:
    """The test runs twice: on its own redis-server, and on the session's Redis Cluster."""
    if request.param == "single":
        server = RedisServer().start()
        yield RedisTarget(server.url, cluster=False, prefix="bf", server=server)
        server.stop()
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        yield RedisTarget(cluster.url, cluster=True, prefix=f"t{os.getpid()}-{next(_prefix_counter)}")


@pytest.fixture
async def target_store(target: RedisTarget) -> AsyncIterator[BatchStore]:
    s = target.store()
    yield s
    await s.aclose()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[BatchStore]:
    s = BatchStore.from_url(redis_server.url, name="test", shards=TEST_SHARDS)
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
