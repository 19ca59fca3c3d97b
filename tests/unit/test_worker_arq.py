"""A worker process's arq workers: the clients it opens for them, and how it stops them (no servers:
nothing here connects)."""

from __future__ import annotations

import asyncio
import time

import pytest
from arq.connections import ArqRedis
from redis.asyncio.sentinel import SentinelConnectionPool

from batchfleet.settings import Settings
from batchfleet.workers.main import _cancel_until_done
from batchfleet.workers.nodes import arq_client, node_url
from batchfleet.workers.settings import json_dumps, json_loads


@pytest.mark.parametrize(
    ("url", "node", "expected"),
    [
        ("redis://127.0.0.1:7000/0", ("10.0.0.5", 7003), "redis://10.0.0.5:7003/0"),
        ("rediss://user:p%40ss@seed.example:6380/0", ("node-2.example", 6390), "rediss://user:p%40ss@node-2.example:6390/0"),
        ("redis://:secret@seed:6379", ("::1", 7001), "redis://:secret@[::1]:7001"),
        ("redis://seed:6379/0?protocol=2", ("seed-b", 6379), "redis://seed-b:6379/0?protocol=2"),
    ],
)
def test_node_url_keeps_scheme_credentials_and_db(url: str, node: tuple[str, int], expected: str) -> None:
    assert node_url(url, node) == expected


def test_arq_client_of_a_single_redis_has_the_fleets_timeouts_and_json_jobs() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6399/2", redis_socket_timeout_s=3.0)
    client = arq_client(settings, None, queue_name="{bf0}:queue", name="batchfleet-worker-arq")
    kwargs = client.connection_pool.connection_kwargs
    assert isinstance(client, ArqRedis)
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6399, 2)
    assert kwargs["socket_timeout"] == 3.0
    assert kwargs["client_name"] == "batchfleet-worker-arq"
    assert (client.job_serializer, client.job_deserializer, client.default_queue_name) == (json_dumps, json_loads, "{bf0}:queue")


def test_arq_client_of_a_cluster_primary_talks_to_that_node() -> None:
    settings = Settings(redis_url="redis://seed:7000/0", redis_cluster=True)
    client = arq_client(settings, ("10.0.0.7", 7004), queue_name="{bf1}:queue", name="n")
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"]) == ("10.0.0.7", 7004)


def test_arq_client_with_sentinel_asks_the_sentinels() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/3", redis_sentinels="127.0.0.1:26379", redis_sentinel_master="bf")
    client = arq_client(settings, None, queue_name="{bf0}:queue", name="n")
    assert isinstance(client.connection_pool, SentinelConnectionPool)
    assert client.connection_pool.connection_kwargs["db"] == 3


async def test_an_arq_worker_that_swallows_a_cancel_is_cancelled_again() -> None:
    """Python 3.11's wait_for loses a cancel that lands as the awaited send completes (redis-py sends
    under it): the arq worker goes on polling, so run_worker cancels it again until it ends."""
    swallowed = asyncio.Event()

    async def polling() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # what a lost cancel looks like from outside
            swallowed.set()
        await asyncio.sleep(60)

    main = asyncio.ensure_future(polling())
    await asyncio.sleep(0)
    started = time.monotonic()
    await asyncio.wait_for(_cancel_until_done([main]), 5)
    assert swallowed.is_set() and main.cancelled()
    assert time.monotonic() - started < 2
