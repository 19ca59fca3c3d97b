"""Upload bodies across a failover that loses writes: with the upload WAIT, a body is only sent once
a replica holds it, so the promoted replica can never lead another aggregator to send a different
body under the same batch id.  Without it (the control case) that is exactly what happens."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from batchfleet.keys import batch_id_for
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from batchfleet_dev.tcpproxy import TcpProxy
from tests.integration.fleet import (
    TEST_SHARDS,
    batches_uploaded,
    fleet,
    lines_uploaded,
    make_settings,
    message,
    produce,
    read_uploads,
    wait_until,
)

BATCHES = 3


async def _replica_connected(primary: aioredis.Redis) -> bool:
    info = await primary.info("replication")
    return int(info.get("connected_slaves", 0)) >= 1 and "online" in str(info.get("slave0", ""))


def _bodies(out: Path) -> dict[str, list[str]]:
    by_id: dict[str, list[str]] = defaultdict(list)
    for line in out.read_bytes().splitlines() if out.exists() else []:
        if line.strip():
            by_id[str(orjson.loads(line)["batch_id"])].append(line.decode())
    return by_id


@pytest.mark.slow
@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["upload-wait", "no-wait-control"])
async def test_a_failover_that_lost_the_frozen_body_never_yields_a_second_body(
    broker: KafkaBroker, make_topic, tmp_path: Path, caplog: pytest.LogCaptureFixture, wait_replicas: int
) -> None:
    caplog.set_level(logging.WARNING, logger="batchfleet.aggregator.service")
    primary = RedisServer().start()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    promoted_replica: RedisServer | None = None
    proxy = await TcpProxy(primary.port).start()
    p_client = aioredis.Redis(port=primary.port)
    r_client = aioredis.Redis(port=replica.port)
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        proxy.url,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batching="message",
        lease_s=2.0,
        upload_timeout_s=1.0,
        upload_wait_replicas=wait_replicas,
        upload_wait_timeout_ms=200,
    )
    store = BatchStore.from_url(replica.url, shards=TEST_SHARDS)
    p_store = BatchStore.from_url(primary.url, shards=TEST_SHARDS)
    try:
        await wait_until(lambda: _replica_connected(p_client), 30, "the replica to connect")
        async with fleet(settings, workers=0, aggregators=0):
            await r_client.execute_command("REPLICAOF", "NO", "ONE")  # replication cut: nothing below reaches it
            await produce(broker.bootstrap, topic, [message([f"A{i}", f"B{i}"]) for i in range(BATCHES)], partition=0)
            async with fleet(settings, dispatchers=0):  # workers and an aggregator against the old primary
                if wait_replicas:

                    async def held_back() -> bool:
                        frozen = [await p_store.payload(batch_id_for(topic, 0, i)) for i in range(BATCHES)]
                        return all(frozen) and "replica(s) after" in caplog.text

                    await wait_until(held_back, 30, "every body frozen on the old primary and held back")
                    assert read_uploads(out) == []  # not on a replica: not sent
                else:
                    await wait_until(lines_uploaded(out, BATCHES), 30, "every batch uploaded from the old primary")
            # the failover: the address leads to the replica, which never saw these batches; the old
            # primary is gone and a new replica follows the promoted one
            await proxy.switch(replica.port)
            primary.kill()
            promoted_replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(replica.port)]).start()
            await wait_until(lambda: _replica_connected(r_client), 30, "a replica of the promoted primary")
            async with fleet(settings, dispatchers=0):
                await wait_until(lambda: batches_uploaded(store, BATCHES), 60, "every batch uploaded after the failover")
    finally:
        for client in (store, p_store):
            await client.aclose()
        await p_client.aclose()
        await r_client.aclose()
        await proxy.close()
        for server in (primary, replica, promoted_replica):
            if server is not None:
                server.stop()
    bodies = _bodies(out)
    assert sorted(bodies) == [batch_id_for(topic, 0, i) for i in range(BATCHES)]
    if wait_replicas:
        assert all(len(sent) == 1 for sent in bodies.values()), {b: len(s) for b, s in bodies.items()}
    else:  # the hazard the WAIT closes: sent twice under one id, with different bodies
        assert all(len(set(sent)) == 2 for sent in bodies.values()), {b: len(s) for b, s in bodies.items()}
