"""Several processes per role, redelivery, rebalancing and every uploader kind, on real servers."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from tests.integration import uploadsink
from tests.integration.fleet import (
    Proc,
    batches_uploaded,
    fleet,
    make_settings,
    message,
    produce,
    read_uploads,
    settings_env,
    wait_until,
)


async def test_two_worker_and_two_aggregator_processes_upload_each_batch_once(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic(partitions=2)
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", batching="message", batch_timeout_s=3.0)
    env = settings_env(settings)
    procs = [
        Proc(role, env, tmp_path / f"{role}-{i}.log")
        for i, role in enumerate(["worker", "worker", "aggregator", "aggregator", "dispatcher"])
    ]
    try:

        async def both_workers() -> bool:  # so that one worker does not take every batch before the other starts
            return len(await store.live_processes("worker")) >= 2

        await wait_until(both_workers, 60, "two live worker processes")
        values = [message([f"S{i:03d}", f"S{i + 1:03d}", f"NONE-{i}"]) for i in range(0, 40, 2)]
        await produce(broker.bootstrap, topic, values[:10], partition=0)
        await produce(broker.bootstrap, topic, values[10:], partition=1)

        async def all_done() -> bool:
            return (await store.stats()).get("batches_uploaded", 0) >= 20

        await wait_until(all_done, 60, "20 uploaded batches")
    finally:
        codes = [p.stop() for p in procs]
    uploads = read_uploads(out)
    ids = Counter(p["batch_id"] for p in uploads)
    assert len(ids) == 20 and set(ids.values()) == {1}, ids
    assert all(p["reason"] == "complete" and p["summary"]["ok"] == 2 and p["summary"]["empty"] == 1 for p in uploads)
    workers = {o.worker for p in uploads for o in (await store.batch_outcomes(p["batch_id"])).values()}
    assert len(workers) == 2, f"both worker processes ran stations: {workers}"
    assert codes == [0, 0, 0, 0, 0], codes


async def test_two_dispatchers_split_partitions_and_batch_each_message_once(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic(partitions=4)
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", batching="message")
    async with fleet(settings, dispatchers=2, workers=1) as f:

        async def both_assigned() -> bool:
            return all(d.consumer is not None and d.consumer.assignment() for d in f.dispatchers)

        await wait_until(both_assigned, 30, "both dispatchers to get partitions")
        for p in range(4):
            await produce(broker.bootstrap, topic, [message([f"P{p}-{i}"]) for i in range(5)], partition=p)

        async def all_done() -> bool:
            return (await store.stats()).get("batches_uploaded", 0) >= 20

        await wait_until(all_done, 60, "20 uploads")
        created = [d.batches_created for d in f.dispatchers]
        assignments = [{tp.partition for tp in d.consumer.assignment()} for d in f.dispatchers if d.consumer]
    ids = Counter(p["batch_id"] for p in read_uploads(out))
    assert len(ids) == 20 and set(ids.values()) == {1}
    assert sum(created) == 20 and all(c > 0 for c in created), created
    assert assignments[0].isdisjoint(assignments[1]) and assignments[0] | assignments[1] == {0, 1, 2, 3}


@pytest.mark.slow
async def test_redelivered_messages_make_no_second_batch(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    """A second consumer group re-reads the whole topic from offset 0 (as after a lost Kafka commit):
    the offsets stored in Redis make it skip what was ingested, so no batch is created twice."""
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    first = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", batching="message")
    await produce(broker.bootstrap, topic, [message(["S001"]), message(["S002"])])
    async with fleet(first, workers=1):
        await wait_until(lambda: batches_uploaded(store, 2), 30, "two uploads")
    await produce(broker.bootstrap, topic, [message(["S003"])])
    again = first.model_copy(update={"kafka_group_id": first.kafka_group_id + "-replay"})
    async with fleet(again, workers=1) as f:
        await wait_until(lambda: batches_uploaded(store, 3), 30, "the third message's upload")
        created = f.dispatchers[0].batches_created
    ids = Counter(p["batch_id"] for p in read_uploads(out))
    assert ids == Counter({f"{topic}:0:0": 1, f"{topic}:0:1": 1, f"{topic}:0:2": 1})
    assert created == 1
    assert (await store.stats())["batches_created"] == 3


async def test_http_uploader_posts_with_idempotency_key_and_retries(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic
) -> None:
    topic = await make_topic()
    with uploadsink.HttpSink(fail_first=2) as sink:
        settings = make_settings(
            redis_server.url, broker.bootstrap, [topic], sink.url, upload_auth_header="Authorization: Bearer s3cret"
        )
        await produce(broker.bootstrap, topic, [message(["S001", "S002"])])
        async with fleet(settings, workers=1):
            await wait_until(lambda: batches_uploaded(store, 1), 30, "the upload after two 503s")
    assert len(sink.requests) == 3
    keys = {h["idempotency-key"] for h, _ in sink.requests}
    bodies = [b for _, b in sink.requests]
    assert keys == {f"{topic}:0:0"}
    assert bodies[0] == bodies[1] == bodies[2]  # every retry sends the same body
    assert all(h["authorization"] == "Bearer s3cret" for h, _ in sink.requests)
    assert (await store.batch_meta(f"{topic}:0:0"))["upload_failures"] == "2"


async def test_upload_budget_exhausted_goes_to_dead_letter_set(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic
) -> None:
    topic = await make_topic()
    with uploadsink.HttpSink(always_fail=True) as sink:
        settings = make_settings(redis_server.url, broker.bootstrap, [topic], sink.url, upload_max_attempts=3)
        await produce(broker.bootstrap, topic, [message(["S001"])])
        async with fleet(settings, workers=1):

            async def dead() -> bool:
                return bool(await store.dead_batch_ids())

            await wait_until(dead, 30, "the dead-letter set")
            meta = await store.batch_meta(f"{topic}:0:0")
    assert await store.dead_batch_ids() == [f"{topic}:0:0"]
    assert len(sink.requests) == 3
    assert meta["state"] == "dead" and "503" in meta["last_error"]
    assert await store.redis.ttl(store.keys.batch(f"{topic}:0:0")) == -1  # kept until replayed


@pytest.mark.slow
async def test_kafka_uploader_produces_keyed_by_batch_id(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic
) -> None:
    topic = await make_topic()
    output = await make_topic(suffix="-out")
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"kafka://{output}")
    await produce(broker.bootstrap, topic, [message(["S001", "S002"])])
    async with fleet(settings, workers=1):
        await wait_until(lambda: batches_uploaded(store, 1), 30, "upload")
    consumer = AIOKafkaConsumer(
        output, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", group_id=f"{output}-reader"
    )
    await consumer.start()
    try:
        got = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert got.key == f"{topic}:0:0".encode()
    assert orjson.loads(got.value)["summary"]["ok"] == 2


async def test_custom_callable_uploader(broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic) -> None:
    topic = await make_topic()
    uploadsink.received.clear()
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], "tests.integration.uploadsink:collect")
    await produce(broker.bootstrap, topic, [message(["S001", "NONE-1"])])
    async with fleet(settings, workers=1):
        await wait_until(lambda: batches_uploaded(store, 1), 30, "upload")
    [payload] = uploadsink.received
    assert payload["batch_id"] == f"{topic}:0:0" and payload["empty"] == ["NONE-1"]


async def test_worker_started_the_arq_way(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    """`arq batchfleet.workers.WorkerSettings` (an unmodified arq CLI) runs station jobs like `batchfleet worker`."""
    import subprocess
    import sys

    from tests.integration.fleet import REPO

    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", shards=1)
    store = BatchStore.from_settings(settings, name="test-one-shard")
    log = (tmp_path / "arq.log").open("wb")
    arq = subprocess.Popen(  # noqa: ASYNC220 (started once, never waited on in the loop)
        [sys.executable, "-m", "arq", "batchfleet.workers.WorkerSettings"],
        env=settings_env(settings),
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    try:
        async with fleet(settings, workers=0):
            await produce(broker.bootstrap, topic, [message(["S001", "NONE-1"])])
            await wait_until(lambda: batches_uploaded(store, 1), 30, "the upload")
    finally:
        arq.terminate()
        arq.wait(20)
        log.close()
        await store.aclose()
    [payload] = read_uploads(out)
    assert payload["reason"] == "complete" and payload["summary"]["ok"] == 1 and payload["empty"] == ["NONE-1"]
