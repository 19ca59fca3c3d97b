"""Helpers that run the real services in-process (as asyncio tasks) or as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from arq.worker import Worker

from batchfleet.aggregator.service import Aggregator
from batchfleet.aggregator.uploaders import make_uploader
from batchfleet.dispatcher.service import Dispatcher
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.workers.main import run_worker
from batchfleet_dev import REPO as REPO  # re-exported: the tests run subprocesses from the checkout
from batchfleet_dev.localstack import RedisServer
from batchfleet_dev.procs import RoleProcess, role_env

TEST_SHARDS = 3  # the fleets of the integration tests spread their partitions over several shards
# Run a test with one station per job and with every station of a batch in one job (1 worker: a batch
# becomes ceil(n / stations_per_job) jobs).
GROUPINGS = pytest.mark.parametrize("per_job", [1, 100], ids=["groups-of-one", "groups-of-many"])


@dataclass
class RedisTarget:
    """Where a test's fleet keeps its state: a single redis-server or a Redis Cluster (with a key
    prefix of the test's own)."""

    url: str
    cluster: bool
    prefix: str
    server: RedisServer | None = None  # the single node, for tests that kill it

    @property
    def options(self) -> dict[str, Any]:
        """make_settings overrides for this target."""
        return {"redis_cluster": self.cluster, "key_prefix": self.prefix}

    def store(self, name: str = "test") -> BatchStore:
        return BatchStore.from_url(self.url, prefix=self.prefix, shards=TEST_SHARDS, cluster=self.cluster, name=name)


def make_settings(redis: str | RedisTarget, bootstrap: str, topics: list[str], uploader: str, **overrides: Any) -> Settings:
    """Test settings; ``redis`` is a URL or a :class:`RedisTarget` (its cluster flag and prefix too)."""
    target = redis if isinstance(redis, RedisTarget) else RedisTarget(redis, cluster=False, prefix="bf")
    values: dict[str, Any] = {
        "redis_url": target.url,
        **target.options,
        "kafka_bootstrap_servers": bootstrap,
        "topics": topics,
        "uploader": uploader,
        "processor": "tests.integration.processors:async_process",
        "batch_timeout_s": 3.0,
        "poll_timeout_ms": 200,
        "worker_poll_delay_s": 0.02,
        "upload_backoff_base_s": 0.1,
        "upload_backoff_max_s": 0.5,
        "kafka_group_id": f"g-{topics[0] if topics else 'none'}",
        "shards": TEST_SHARDS,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as BATCHFLEET_* variables, for subprocess roles."""
    return role_env(settings)


async def produce(bootstrap: str, topic: str, values: list[bytes | None], partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


def message(stations: list[str], value: int = 1) -> bytes:
    return orjson.dumps({"stationData": [{"stationId": s, "v": value} for s in stations]})


def read_uploads(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def batches_uploaded(store: BatchStore, n: int) -> bool:
    """At least n batches acked as uploaded (the fleet-wide counter)."""
    return (await store.stats()).get("batches_uploaded", 0) >= n


def lines_uploaded(path: Path, n: int) -> Callable[[], Awaitable[bool]]:
    """A wait_until check: the file uploader has written at least n lines."""

    async def check() -> bool:
        return len(read_uploads(path)) >= n

    return check


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll a condition until it holds; fail with `what` after the bound (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def sentinels_know_a_replica(sentinel_ports: list[int], master: str = "bf") -> bool:
    """Every Sentinel has discovered a replica of ``master`` (needed before it can fail over)."""
    import redis.asyncio as aioredis

    for port in sentinel_ports:
        async with aioredis.Redis(port=port) as client:
            if not await client.execute_command("SENTINEL", "REPLICAS", master):
                return False
    return True


class InProcessFleet:
    """Dispatchers, workers and aggregators as tasks of the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.workers: list[Worker] = []
        self.stores: list[BatchStore] = []
        self.dispatchers: list[Dispatcher] = []
        self.aggregators: list[Aggregator] = []
        self.worker_tasks: list[asyncio.Task[Any]] = []

    def _store(self) -> BatchStore:
        s = BatchStore.from_settings(self.settings)
        self.stores.append(s)
        return s

    def start_dispatcher(self) -> Dispatcher:
        d = Dispatcher(self.settings, self._store(), name=f"dispatcher-{len(self.dispatchers)}")
        self.dispatchers.append(d)
        self.tasks.append(asyncio.create_task(d.run(self.stop)))
        return d

    async def start_aggregator(self) -> Aggregator:
        uploader = make_uploader(self.settings)
        await uploader.start()
        a = Aggregator(self.settings, self._store(), uploader, name=f"aggregator-{len(self.aggregators)}")
        self.aggregators.append(a)

        async def run() -> None:
            try:
                await a.run(self.stop)
            finally:
                await uploader.close()

        self.tasks.append(asyncio.create_task(run()))
        return a

    def start_worker(self) -> None:
        task = asyncio.create_task(run_worker(self.settings, started=self.workers))
        self.worker_tasks.append(task)
        self.tasks.append(task)

    async def close(self) -> None:
        self.stop.set()
        for w in self.workers:
            for job in list(w.tasks.values()):
                job.cancel()
        for t in self.worker_tasks:
            t.cancel()
        _, pending = await asyncio.wait(self.tasks, timeout=10) if self.tasks else (set(), set())
        for t in pending:
            t.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for s in self.stores:
            await s.aclose()
        errors = [r for r in results if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError)]
        if errors:
            raise errors[0]


@contextlib.asynccontextmanager
async def fleet(
    settings: Settings, *, dispatchers: int = 1, workers: int = 1, aggregators: int = 1
) -> AsyncIterator[InProcessFleet]:
    f = InProcessFleet(settings)
    try:
        for _ in range(aggregators):
            await f.start_aggregator()
        for _ in range(workers):
            f.start_worker()
        for _ in range(dispatchers):
            f.start_dispatcher()
        yield f
    finally:
        await f.close()


Proc = RoleProcess  # a role as its own OS process: batchfleet_dev.procs, shared with bench, chaos and demo
