"""Fenced ingest against real servers: Redis goes back in time (a failover that lost acknowledged
writes, an AOF restart that lost its tail) under a running dispatcher, and no message is skipped."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from batchfleet.errors import FencedOffsetError, StaleOffsetError
from batchfleet.keys import offset_field
from batchfleet.models import QuarantineEntry
from batchfleet.store import BatchStore
from batchfleet.workers.nodes import open_pools
from batchfleet_dev.localstack import KafkaBroker, RedisServer, SentinelGroup, SentinelServer
from batchfleet_dev.tcpproxy import TcpProxy
from tests.integration.fleet import (
    TEST_SHARDS,
    batches_uploaded,
    fleet,
    make_settings,
    message,
    produce,
    read_uploads,
    sentinels_know_a_replica,
    wait_until,
)
from tests.integration.webdata import spec


# -- the scripts' fence ------------------------------------------------------------------------
async def test_create_batch_is_fenced_on_any_mismatch_and_writes_nothing(store: BatchStore) -> None:
    name = offset_field("F", 0)
    assert await store.create_batch(spec("F:0:0", ["S1"]), expected={name: None})
    stats = await store.stats()
    cases: list[tuple[int | None, str]] = [(None, "believes nothing stored"), (0, "stored is ahead"), (5, "stored is behind")]
    for believed, why in cases:
        with pytest.raises(FencedOffsetError) as fenced:
            await store.create_batch(spec("F:0:1", ["S1"]), expected={name: believed})
        assert (fenced.value.expected, fenced.value.stored_offset) == (believed, 1), why
    assert await store.redis.exists(store.keys.batch("F:0:1")) == 0
    assert (await store.load_offsets([name]))[name] == 1
    after = await store.stats()
    assert after.get("ingest_fenced", 0) - stats.get("ingest_fenced", 0) == 3
    assert after["batches_created"] == stats["batches_created"]
    # the offset vanished (Redis lost it) while the dispatcher expected one
    await store.redis.hdel(store.keys.offsets(store.keys.shard_of_partition("F", 0)), name)
    with pytest.raises(FencedOffsetError) as vanished:
        await store.create_batch(spec("F:0:1", ["S1"]), expected={name: 1})
    assert vanished.value.stored_offset is None
    assert await store.create_batch(spec("F:0:1", ["S1"]), expected={name: None})  # matching: accepted


async def test_stale_stays_distinct_from_fenced(store: BatchStore) -> None:
    name = offset_field("G", 0)
    await store.create_batch(spec("G:0:3", ["S1"]), expected={name: None})
    with pytest.raises(StaleOffsetError):  # the dispatcher agrees with Redis but re-reads old messages
        await store.create_batch(spec("G:0:2", ["S1"]), expected={name: 4})


async def test_quarantine_is_fenced_and_writes_nothing(store: BatchStore) -> None:
    name = offset_field("Q", 0)
    entry = QuarantineEntry(topic="Q", partition=0, offset=7, reason="bad", value=b"x", size=1, advance_offset=True)
    with pytest.raises(FencedOffsetError):
        await store.quarantine(entry, retention_s=60, max_entries=10, expected={name: 7})  # nothing stored
    assert await store.load_offsets([name]) == {}
    assert await store.quarantine(entry, retention_s=60, max_entries=10, expected={name: None})
    assert await store.load_offsets([name]) == {name: 8}
    with pytest.raises(FencedOffsetError) as fenced:
        await store.quarantine(entry, retention_s=60, max_entries=10, expected={name: 3})
    assert fenced.value.stored_offset == 8


# -- a failover that lost acknowledged writes --------------------------------------------------
async def _wait_replica_in_sync(primary: aioredis.Redis, replica: aioredis.Redis) -> None:
    async def synced() -> bool:
        info = await replica.info("replication")
        if info.get("master_link_status") != "up":
            return False
        return bool(info.get("slave_repl_offset") == (await primary.info("replication")).get("master_repl_offset"))

    await wait_until(synced, 30, "the replica to catch up with the primary")


def _assert_each_once(out: Path, expected: set[str]) -> None:
    counts = Counter(p["batch_id"] for p in read_uploads(out))
    assert set(counts) == expected, f"missing {sorted(expected - set(counts))}, extra {sorted(set(counts) - expected)}"
    assert all(n == 1 for n in counts.values()), {b: n for b, n in counts.items() if n > 1}


@pytest.mark.slow
async def test_failover_that_lost_writes_is_fenced_and_nothing_is_skipped(
    broker: KafkaBroker, make_topic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="batchfleet.dispatcher.service")
    primary = RedisServer().start()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    proxy = await TcpProxy(primary.port).start()
    p_client = aioredis.Redis(port=primary.port)
    r_client = aioredis.Redis(port=replica.port)
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(proxy.url, broker.bootstrap, [topic], f"file://{out}", batching="message")
    store = BatchStore.from_url(replica.url, shards=TEST_SHARDS)
    name = offset_field(topic, 0)
    try:
        async with fleet(settings, workers=0, aggregators=0) as ingest:
            dispatcher = ingest.dispatchers[0]
            async with fleet(settings, dispatchers=0):  # phase 1: ingested, uploaded, replicated
                await produce(broker.bootstrap, topic, [message([f"A{i}"]) for i in range(5)], partition=0)
                await wait_until(lambda: batches_uploaded(store, 5), 30, "phase 1 uploaded (read on the replica)")
            await _wait_replica_in_sync(p_client, r_client)
            await r_client.execute_command("REPLICAOF", "NO", "ONE")  # replication cut: the replica keeps offset 5
            await produce(broker.bootstrap, topic, [message([f"B{i}"]) for i in range(5)], partition=0)

            async def primary_ingested() -> bool:
                return dispatcher.expected.get(name) == 10

            await wait_until(primary_ingested, 30, "phase 2 ingested on the old primary only")
            assert (await store.load_offsets([name]))[name] == 5  # acknowledged by the primary, lost by the replica
            failed_over_at = time.monotonic()
            await proxy.switch(replica.port)  # "failover": the address now leads to the promoted replica
            primary.kill()
            await produce(broker.bootstrap, topic, [message([f"C{i}"]) for i in range(5)], partition=0)
            async with fleet(settings, dispatchers=0):
                await wait_until(lambda: batches_uploaded(store, 15), 60, "every batch uploaded on the new primary")
                recovered_s = time.monotonic() - failed_over_at
            fenced = dispatcher.fenced
    finally:
        await store.aclose()
        await p_client.aclose()
        await r_client.aclose()
        await proxy.close()
        primary.stop()
        replica.stop()
    print(f"\nfailover lost 5 acknowledged batches -> fenced {fenced}x, every batch uploaded {recovered_s:.1f}s after it")
    _assert_each_once(out, {f"{topic}:0:{i}" for i in range(15)})
    assert fenced >= 1
    assert any(f"fenced {topic}[0]: expected redis to hold next offset 10, it holds 5" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
async def test_aof_restart_that_lost_its_tail_is_fenced_and_nothing_is_skipped(
    broker: KafkaBroker, make_topic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A host crash with ``appendfsync everysec`` loses the AOF's last second: simulated exactly by
    restarting Redis on a copy of its AOF taken before the last writes."""
    caplog.set_level(logging.WARNING, logger="batchfleet.dispatcher.service")
    redis = RedisServer(appendonly=True).start()
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(redis.url, broker.bootstrap, [topic], f"file://{out}", batching="message")
    store = BatchStore.from_url(redis.url, shards=TEST_SHARDS)
    client = aioredis.Redis(port=redis.port)
    saved = tmp_path / "aof-before"
    name = offset_field(topic, 0)
    try:
        async with fleet(settings, workers=0, aggregators=0) as ingest:
            dispatcher = ingest.dispatchers[0]
            async with fleet(settings, dispatchers=0):
                await produce(broker.bootstrap, topic, [message([f"A{i}"]) for i in range(5)], partition=0)
                await wait_until(lambda: batches_uploaded(store, 5), 30, "phase 1 uploaded")
            await client.config_set("appendfsync", "always")  # the copy below is a whole AOF
            await asyncio.to_thread(_copy_aof, redis.directory, saved)
            await produce(broker.bootstrap, topic, [message([f"B{i}"]) for i in range(5)], partition=0)

            async def ingested() -> bool:
                return dispatcher.expected.get(name) == 10

            await wait_until(ingested, 30, "phase 2 ingested")
            redis.kill()
            await asyncio.to_thread(_restore_aof, saved, redis.directory)
            redis.start()  # same port: the AOF misses phase 2, as after a crash that lost the tail
            restarted_at = time.monotonic()
            assert (await store.load_offsets([name]))[name] == 5
            await produce(broker.bootstrap, topic, [message([f"C{i}"]) for i in range(5)], partition=0)
            async with fleet(settings, dispatchers=0):
                await wait_until(lambda: batches_uploaded(store, 15), 60, "every batch uploaded after the restart")
                recovered_s = time.monotonic() - restarted_at
            fenced = dispatcher.fenced
    finally:
        await store.aclose()
        await client.aclose()
        redis.stop()
    print(f"\nAOF restart lost 5 batches -> fenced {fenced}x, every batch uploaded {recovered_s:.1f}s after the restart")
    _assert_each_once(out, {f"{topic}:0:{i}" for i in range(15)})
    assert fenced >= 1
    assert any(f"fenced {topic}[0]: expected redis to hold next offset 10, it holds 5" in r.getMessage() for r in caplog.records)


def _copy_aof(directory: Path, to: Path) -> None:
    import shutil

    shutil.copytree(directory / "appendonlydir", to)


def _restore_aof(saved: Path, directory: Path) -> None:
    import shutil

    shutil.rmtree(directory / "appendonlydir")
    shutil.copytree(saved, directory / "appendonlydir")


# -- an offset that vanished entirely ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("began_here", [True, False], ids=["began-here", "inherited"])
async def test_vanished_offset_reseeks_to_where_ingest_began_never_to_the_kafka_commit(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path, began_here: bool
) -> None:
    """Redis loses everything (FLUSHALL stands for a replica promoted before it ever got the partition)
    under a running dispatcher, whose Kafka commits already say 5 or 8.  The dispatcher re-ingests
    from where it began the partition (0) when it did, else from the partition's beginning: every
    message is in Redis again, none skipped."""
    topic = await make_topic()
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{tmp_path / 'u.jsonl'}", batching="message")
    name = offset_field(topic, 0)

    def stored(n: int) -> object:
        async def check() -> bool:
            return (await store.load_offsets([name])).get(name) == n

        return check

    await produce(broker.bootstrap, topic, [message([f"A{i}"]) for i in range(5)], partition=0)
    if not began_here:  # another dispatcher ingested 0..4 and left; ours inherits offset 5 from Redis
        async with fleet(settings, workers=0, aggregators=0):
            await wait_until(stored(5), 30, "the first dispatcher's batches")  # type: ignore[arg-type]
    async with fleet(settings, workers=0, aggregators=0) as ingest:
        await produce(broker.bootstrap, topic, [message([f"B{i}"]) for i in range(3)], partition=0)
        await wait_until(stored(8), 30, "8 messages ingested")  # type: ignore[arg-type]
        await store.redis.flushall()
        await produce(broker.bootstrap, topic, [message([f"C{i}"]) for i in range(2)], partition=0)
        await wait_until(stored(10), 30, "re-ingested up to the end")  # type: ignore[arg-type]
        assert ingest.dispatchers[0].fenced >= 1
    missing = [i for i in range(10) if not await store.redis.exists(store.keys.batch(f"{topic}:0:{i}"))]
    assert missing == []


# -- upload leases across lost writes ----------------------------------------------------------
async def test_a_rolled_back_fence_counter_never_hands_out_a_token_twice(store: BatchStore) -> None:
    """Redis loses the first claim (its counter increment, lease and owner token: restored from a
    DUMP taken before it, as a promoted replica would have them); the second claim draws the same
    counter value, yet gets another token, and the first holder can neither freeze nor ack."""
    await store.create_batch(spec("L:0:0", ["S1"], timeout_s=0.001))
    shard = store.keys.shard_of_batch("L:0:0")
    rolled = [store.keys.batch("L:0:0"), store.keys.due(shard), store.keys.leases(shard), store.keys.fence(shard)]
    await store.redis.incr(store.keys.fence(shard))  # the counter exists before the lost claim
    before = {key: await store.redis.dump(key) for key in rolled}

    async def due() -> bool:  # Redis time has passed the 1 ms deadline
        seconds, micros = await store.redis.time()
        score = await store.redis.zscore(store.keys.due(shard), "L:0:0")
        return score is not None and score <= seconds * 1000 + micros // 1000

    await wait_until(due, 5, "the batch to be due")
    first = await store.claim("L:0:0", lease_ms=60_000)
    assert first is not None
    for key, value in before.items():  # the claim is lost: every key it wrote goes back
        await store.redis.delete(key)
        if value is not None:
            await store.redis.restore(key, 0, value)
    second = await store.claim("L:0:0", lease_ms=60_000)
    assert second is not None
    assert first.token.split("-")[0] == second.token.split("-")[0]  # the counter went back
    assert first.token != second.token
    assert await store.freeze_payload(first, b'{"a": 1}') is None  # fenced: may not upload
    assert await store.ack_upload(first, retention_s=60, upload_ms=1.0) is None  # fenced
    assert await store.freeze_payload(second, b'{"b": 2}') == b'{"b": 2}'
    assert await store.ack_upload(second, retention_s=60, upload_ms=1.0) is not None


# -- Sentinel: every role follows a failover by itself -----------------------------------------
async def _master_port(sentinel: int) -> int:
    async with aioredis.Redis(port=sentinel) as client:
        _, port = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "bf")
    return int(port)


@pytest.mark.slow
async def test_sentinel_failover_every_role_follows_and_every_batch_is_uploaded_once(
    broker: KafkaBroker, make_topic, tmp_path: Path
) -> None:
    primary = RedisServer().start()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    sentinels = [SentinelServer(primary.port, tmp_path / "sentinels").start() for _ in range(3)]
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    addresses = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    settings = make_settings(
        "redis://127.0.0.1:1/0",  # only the db is read: the Sentinels name the primary
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batching="message",
        redis_sentinels=addresses,
        redis_sentinel_master="bf",
        lease_s=2.0,  # a claim made on the old primary in the moment before its demotion is lost: retake it soon
    )
    store = BatchStore.from_settings(settings)
    p_client = aioredis.Redis(port=primary.port)
    r_client = aioredis.Redis(port=replica.port)
    try:
        ports = [s.port for s in sentinels]
        await wait_until(lambda: sentinels_know_a_replica(ports), 30, "the Sentinels to discover the replica")
        async with fleet(settings):
            await produce(broker.bootstrap, topic, [message([f"A{i}"]) for i in range(5)], partition=0)
            await wait_until(lambda: batches_uploaded(store, 5), 30, "uploads before the failover")
            await _wait_replica_in_sync(p_client, r_client)
            failed_over_at = time.monotonic()
            async with aioredis.Redis(port=sentinels[0].port) as client:
                await client.execute_command("SENTINEL", "FAILOVER", "bf")

            async def promoted() -> bool:
                return all([await _master_port(s.port) == replica.port for s in sentinels])

            async def demoted() -> bool:  # Sentinel made the old primary a replica of the new one
                try:
                    role = await p_client.execute_command("ROLE")
                except RedisConnectionError:  # the demotion closes every client connection
                    return False
                return bool(role[0] == b"slave" and role[3] == b"connected")

            await wait_until(promoted, 30, "the replica promoted")
            promoted_s = time.monotonic() - failed_over_at
            await wait_until(demoted, 30, "the old primary demoted")
            demoted_s = time.monotonic() - failed_over_at
            await produce(broker.bootstrap, topic, [message([f"B{i}"]) for i in range(5)], partition=0)
            await wait_until(lambda: batches_uploaded(store, 10), 60, "uploads after the failover")
            recovered_s = time.monotonic() - failed_over_at
    finally:
        await store.aclose()
        await p_client.aclose()
        await r_client.aclose()
        for s in sentinels:
            s.stop()
        primary.stop()
        replica.stop()
    print(
        f"\nSENTINEL FAILOVER -> replica promoted after {promoted_s:.1f}s, old primary demoted after {demoted_s:.1f}s, "
        f"every batch uploaded {recovered_s:.1f}s after the failover"
    )
    _assert_each_once(out, {f"{topic}:0:{i}" for i in range(10)})


# -- the arq clients a worker opens to (re)build its arq workers are closed on every path ---------
async def _arq_connections(store: BatchStore) -> int:
    clients = await store.redis.client_list()
    return sum(1 for c in clients if c.get("name") == "batchfleet-worker-arq")


def _two_nodes(store: BatchStore, redis_server: RedisServer, second_port: int) -> None:
    """The store maps its shards to two primaries (as on a cluster): ``redis_server``, then (in
    open_pools' order) 127.0.0.2:``second_port``."""
    nodes = [("127.0.0.1", redis_server.port), ("127.0.0.2", second_port)]

    async def primaries_by_shard() -> dict[int, tuple[str, int]]:
        return {shard: nodes[shard % 2] for shard in store.shards}

    store.primaries_by_shard = primaries_by_shard  # type: ignore[method-assign]


async def test_arq_clients_opened_before_a_node_failed_are_closed(redis_server: RedisServer, store: BatchStore) -> None:
    """One primary is gone (a failover in progress): open_pools fails, and closes the client it had
    already opened and pinged on the other one (arq's create_pool would have dropped it, unclosed)."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.2", 0))
        dead_port = probe.getsockname()[1]
    _two_nodes(store, redis_server, dead_port)
    settings = make_settings(redis_server.url, "127.0.0.1:9", ["t"], "file:///dev/null")
    with pytest.raises(RedisConnectionError):
        await open_pools(settings, store, name="batchfleet-worker-arq")
    gc.collect()  # an unclosed connection would be reported here (warnings are errors)
    assert await _arq_connections(store) == 0


async def test_arq_clients_of_a_rebuild_cancelled_mid_ping_are_closed(redis_server: RedisServer, store: BatchStore) -> None:
    """The rebuild is cancelled (the worker is stopped) while a primary has not answered the PING yet:
    both clients, the pinged one and the one still waiting, are closed."""
    connected, closed = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # never answers; returns when the client closes its connection
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.2", 0)
    try:
        _two_nodes(store, redis_server, server.sockets[0].getsockname()[1])
        settings = make_settings(redis_server.url, "127.0.0.1:9", ["t"], "file:///dev/null", redis_socket_timeout_s=60)
        opening = asyncio.create_task(open_pools(settings, store, name="batchfleet-worker-arq"))
        await asyncio.wait_for(connected.wait(), 10)
        assert await _arq_connections(store) == 1  # the first node's client, pinged
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await asyncio.wait_for(closed.wait(), 10)
        gc.collect()
        assert await _arq_connections(store) == 0
    finally:
        server.close()
        await server.wait_closed()


# -- durability knob: WAIT after each ingest write ---------------------------------------------
@pytest.mark.slow
async def test_ingest_wait_counts_replica_acks_and_warns_without_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    primary = RedisServer().start()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    store = BatchStore.from_url(primary.url, shards=TEST_SHARDS)
    p_client = aioredis.Redis(port=primary.port)
    r_client = aioredis.Redis(port=replica.port)
    try:
        await _wait_replica_in_sync(p_client, r_client)
        started = time.monotonic()
        for i in range(50):
            await store.create_batch(spec(f"W:0:{i}", ["S1"]))
        plain_ms = (time.monotonic() - started) * 20  # per write
        store.ingest_wait = (1, 2000)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="batchfleet.store.transitions"):
            for i in range(50, 100):
                await store.create_batch(spec(f"W:0:{i}", ["S1"]))
            waited_ms = (time.monotonic() - started) * 20
            assert not [r for r in caplog.records if "replica" in r.getMessage()]
            assert await r_client.exists(store.keys.batch("W:0:99")) == 1  # on the replica when acknowledged
            replica.kill()
            store.ingest_wait = (1, 200)
            await store.create_batch(spec("W:0:100", ["S1"]))
        assert any("acknowledged by 0 of 1 replica(s) within 200 ms" in r.getMessage() for r in caplog.records)
    finally:
        await store.aclose()
        await p_client.aclose()
        await r_client.aclose()
        primary.stop()
        replica.stop()
    print(f"\ncreate_batch: {plain_ms:.2f} ms without WAIT, {waited_ms:.2f} ms with WAIT 1 (loopback replica)")


@pytest.mark.slow
async def test_a_sentinel_client_leaves_the_old_primary_before_sentinel_demotes_it(tmp_path: Path) -> None:
    """After a SENTINEL FAILOVER the old primary keeps accepting writes for ~8 s until Sentinel turns
    it into a replica; whatever is written to it then is lost.  The fleet's client stops using its
    connections to it within ~0.5 s of the Sentinels naming the new primary."""
    group = await asyncio.to_thread(SentinelGroup(tmp_path / "redis", replicas=1).start)
    store = BatchStore.from_url("redis://127.0.0.1:1/0", sentinels=group.sentinel_list(), sentinel_master="bf")
    try:
        await store.redis.set("before", 1)  # a pooled connection to the first primary
        old = group.master_port()
        assert old is not None
        new = await asyncio.to_thread(group.failover)
        await asyncio.sleep(0.6)
        await store.redis.set("after", 1)
        async with aioredis.Redis(port=old) as old_client, aioredis.Redis(port=new) as new_client:
            old_role = (await old_client.execute_command("ROLE"))[0]
            assert await new_client.get("after") == b"1"  # on the new primary ...
            assert await old_client.get("after") is None  # ... not on the old one
        assert old_role == b"master", "Sentinel turned the old primary before the write: the check proved nothing"
    finally:
        await store.aclose()
        await asyncio.to_thread(group.stop)
