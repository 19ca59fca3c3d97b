"""Upload bodies across a failover that loses writes: with the upload WAIT, a body is only sent once
a replica holds it, so the promoted replica can never lead another aggregator to send a different
body under the same batch id.  Without it (the control case) that is exactly what happens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from batchfleet.keys import batch_id_for
from batchfleet.models import Claim
from batchfleet.ops import check_health, status_data
from batchfleet.retry import REDIS_UNAVAILABLE
from batchfleet.store import BatchStore
from batchfleet_dev.cluster import RedisCluster
from batchfleet_dev.localstack import KafkaBroker, RedisServer, SentinelServer
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
    sentinels_know_a_replica,
    wait_until,
)
from tests.integration.webdata import spec

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


# -- a node lost for good: the WAIT asks only for replicas a failover could promote --------------
@pytest.mark.slow
async def test_a_primary_lost_for_good_halts_no_upload_and_shows_the_reduced_protection(
    broker: KafkaBroker, make_topic, tmp_path: Path
) -> None:
    """Sentinel with a primary and one replica; the primary is SIGKILLed and never comes back.  The
    promoted replica has no replica, so no failover target exists: uploads go on (each batch once, one
    body), and status, health and the aggregator's heartbeat say they run with less protection."""
    primary = RedisServer(appendonly=True).start()
    replica = RedisServer(appendonly=True, extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    sentinels = [SentinelServer(primary.port, tmp_path / "sentinels").start() for _ in range(3)]
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        "redis://127.0.0.1:1/0",  # only the db is read: the Sentinels name the primary
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batching="message",
        redis_sentinels=",".join(f"127.0.0.1:{s.port}" for s in sentinels),
        redis_sentinel_master="bf",
        lease_s=2.0,
        upload_wait_timeout_ms=200,
    )
    assert settings.upload_wait() == (1, 200)  # the Sentinel default: one replica must hold a body
    store = BatchStore.from_settings(settings)
    p_client = aioredis.Redis(port=primary.port)
    try:
        await wait_until(lambda: _replica_connected(p_client), 30, "the replica to connect")

        ports = [s.port for s in sentinels]
        await wait_until(lambda: sentinels_know_a_replica(ports), 30, "the Sentinels to discover the replica")
        async with fleet(settings, aggregators=2):
            await produce(broker.bootstrap, topic, [message([f"A{i}", f"W-{i}"]) for i in range(BATCHES)], partition=0)
            await wait_until(lambda: batches_uploaded(store, BATCHES), 30, "uploads before the loss (one replica each)")
            assert (await status_data(store))["warnings"] == []
            primary.kill()  # for good: never restarted
            await produce(broker.bootstrap, topic, [message([f"B{i}", f"W-{i}"]) for i in range(BATCHES)], partition=0)

            async def all_uploaded() -> bool:  # the store asks the Sentinels again after the failover
                with contextlib.suppress(*REDIS_UNAVAILABLE):
                    return await batches_uploaded(store, 2 * BATCHES)
                return False

            await wait_until(all_uploaded, 60, "every batch uploaded after the loss")

            warnings: list[str] = []

            async def shown() -> bool:
                with contextlib.suppress(*REDIS_UNAVAILABLE):
                    warnings[:] = (await status_data(store))["warnings"]
                return bool(warnings)

            await wait_until(shown, 15, "status to show the reduced protection")
            warning = warnings[0]
            healthy, health = await check_health(settings, "aggregator", None)
    finally:
        await store.aclose()
        await p_client.aclose()
        for s in sentinels:
            s.stop()
        primary.stop()
        replica.stop()
    bodies = _bodies(out)
    assert sorted(bodies) == sorted(batch_id_for(topic, 0, i) for i in range(2 * BATCHES))
    assert all(len(set(sent)) == 1 for sent in bodies.values())  # one body per batch id, however often sent
    assert "less protection than configured" in warning and "BATCHFLEET_UPLOAD_WAIT_REPLICAS=1" in warning
    assert healthy and health.startswith("healthy (degraded)") and "less protection" in health


# -- on a Redis Cluster: the WAIT goes to the primary that holds the batch's slot ----------------
async def _claimed(store: BatchStore, batch_id: str) -> Claim:
    for _ in range(100):  # the 1 ms deadline passes on the node's clock
        claim = await store.claim(batch_id, 30_000)
        if claim is not None:
            return claim
        await asyncio.sleep(0.01)
    raise AssertionError(f"{batch_id} never claimable")


def _replica_of(cluster: RedisCluster, primary: RedisServer) -> RedisServer:
    for node in cluster.nodes:
        if node is not primary and node.proc is not None and node.proc.poll() is None:
            with redis.Redis(port=node.port) as client:
                role = client.execute_command("ROLE")
            if role[0] == b"slave" and int(role[2]) == primary.port:
                return node
    raise AssertionError(f"no replica of {primary.port}")


async def _replicas_online(cluster: RedisCluster) -> bool:
    for node in cluster.primary_nodes():
        async with aioredis.Redis(port=node.port) as client:
            if not await _replica_connected(client):
                return False
    return True


async def _claim_one_batch_per_shard(store: BatchStore) -> dict[int, Claim]:
    by_shard: dict[int, str] = {}
    for partition in range(64):  # the shards spread over the 3 primaries
        shard = store.keys.shard_of_partition("UW", partition)
        if shard not in by_shard:
            by_shard[shard] = batch_id_for("UW", partition, 0)
            await store.create_batch(spec(by_shard[shard], ["S1"], timeout_s=0.001))
    assert sorted(by_shard) == list(store.shards)
    return {shard: await _claimed(store, bid) for shard, bid in by_shard.items()}


async def _refreeze_through_a_failover(store: BatchStore, claim: Claim, body: bytes) -> tuple[bytes | None, int]:
    """freeze + WAIT until the store reaches the promoted primary: first the dead node, then MOVED
    (TryAgainError), each followed by a refresh of the slot map."""
    for _ in range(100):
        try:
            return await store.freeze_payload_replicated(claim, body, 1, 300)
        except REDIS_UNAVAILABLE:
            with contextlib.suppress(*REDIS_UNAVAILABLE):
                await store.redis.nodes_manager.initialize()  # type: ignore[union-attr]
        await asyncio.sleep(0.2)
    raise AssertionError("never reached the promoted primary")


@pytest.mark.slow
async def test_upload_wait_on_a_cluster_counts_the_replicas_of_the_batch_primary() -> None:
    cluster = RedisCluster(primaries=3, replicas=1, node_timeout_ms=1000).start()
    store = BatchStore.from_url(cluster.url, cluster=True, shards=6, prefix="uw")
    try:
        await wait_until(lambda: _replicas_online(cluster), 30, "every primary's replica online (after CLUSTER create)")
        claims = await _claim_one_batch_per_shard(store)
        for shard, claim in claims.items():
            assert await store.freeze_payload_replicated(claim, b"body", 1, 300) == (b"body", 1), shard
        # one primary's replica goes away: that primary's batches are short of replicas, the others are not
        primaries = await store.primaries_by_shard()
        assert primaries is not None
        _replica_of(cluster, next(n for n in cluster.nodes if n.port == primaries[0][1])).kill()
        for shard, claim in claims.items():
            acked = (await store.freeze_payload_replicated(claim, b"body", 1, 300))[1]
            assert acked == (0 if primaries[shard] == primaries[0] else 1), shard

        # the cluster flags the dead replica ``fail``: that primary's batches can be promoted to no
        # replica, so an aggregator asks its WAIT for none (aggregator/protection.py); the others for one
        first = next(shard for shard in claims if primaries[shard] == primaries[0])

        async def flagged() -> bool:
            view = await store.replica_view(claims[first].batch_id)
            return view is not None and view[1] == 0

        await wait_until(flagged, 30, "the cluster to flag the killed replica fail")
        for shard, claim in claims.items():
            view = await store.replica_view(claim.batch_id)
            assert view is not None and view[1] == (0 if primaries[shard] == primaries[0] else 1), shard
        # another primary is killed and its replica promoted: the body frozen (and WAITed for) before
        # is what the new primary holds, so any later attempt sends those very bytes
        other = next(shard for shard in claims if primaries[shard] != primaries[0])
        next(n for n in cluster.nodes if n.port == primaries[other][1]).kill()
        await asyncio.to_thread(cluster.wait_promoted, 30)
        after = await _refreeze_through_a_failover(store, claims[other], b"another body")
        assert after == (b"body", 0)  # the same bytes; the promoted primary has no replica yet
    finally:
        await store.aclose()
        cluster.stop()
