"""Completion policies on real servers: quorum, priority deadlines and queueing, late-result policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from batchfleet.settings import PriorityLevel
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from tests.integration.fleet import (
    GROUPINGS,
    RedisTarget,
    fleet,
    lines_uploaded,
    make_settings,
    message,
    produce,
    read_uploads,
    wait_until,
)


@GROUPINGS
async def test_quorum_uploads_at_quorum_plus_grace_and_counts_later_results_late(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path, per_job: int
) -> None:
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        target,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batch_timeout_s=20.0,
        station_timeout_s=30.0,
        quorum=0.5,
        quorum_grace_s=0.3,
        stations_per_job=per_job,
    )
    batch_id = f"{topic}:0:0"
    async with fleet(settings, workers=1):
        await produce(broker.bootstrap, topic, [message(["S001", "SLOW-1", "S002", "SLOW-2"])])

        async def two_late() -> bool:
            return (await target_store.batch_meta(batch_id)).get("late") == "2"

        await wait_until(two_late, 30, "the slow stations' late results")
        meta = await target_store.batch_meta(batch_id)
        stats = await target_store.stats()
    [payload] = read_uploads(out)
    assert payload["reason"] == "quorum"
    assert payload["summary"] == {"expected": 4, "ok": 2, "failed": 0, "empty": 0, "missing": 2, "late": 0}
    assert payload["missing"] == ["SLOW-1", "SLOW-2"]
    waited_ms = int(meta["finalized_ms"]) - int(meta["quorum_ms"])
    assert 300 <= waited_ms < 1300, waited_ms  # the grace, then finalized promptly (not at the 20 s deadline)
    assert int(meta["finalized_ms"]) < int(meta["deadline_ms"])
    assert stats["batches_quorum"] == 1 and stats["late_results"] == 2
    assert len(read_uploads(out)) == 1


@GROUPINGS
async def test_quorum_with_no_grace_finalizes_at_once(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path, per_job: int
) -> None:
    """With groups of many, the hanging stations run in the same job as the ones that reach the quorum:
    those are recorded as they finish, so the quorum does not wait for the job."""
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        redis_server.url,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batch_timeout_s=20.0,
        station_timeout_s=30.0,
        quorum=0.6,
        stations_per_job=per_job,
    )
    async with fleet(settings, workers=1):
        await produce(broker.bootstrap, topic, [message(["S001", "S002", "HANG-1", "HANG-2", "S003"])])
        await wait_until(lines_uploaded(out, 1), 30, "the quorum upload")
        meta = await store.batch_meta(f"{topic}:0:0")
    [payload] = read_uploads(out)
    assert payload["reason"] == "quorum" and payload["summary"]["ok"] == 3 and payload["summary"]["missing"] == 2
    assert meta["quorum_needed"] == "3"
    assert int(meta["finalized_ms"]) - int(meta["quorum_ms"]) < 1000  # at once, not at the 20 s deadline


@pytest.mark.slow
@pytest.mark.parametrize(
    ("per_job", "kind", "max_jobs", "queued"),
    [(1, "W", 4, 200), (100, "STAMP", 2, 20)],  # 400 jobs of 50 ms / 40 jobs of 10 stations of 0.5 s
    ids=["groups-of-one", "groups-of-many"],
)
async def test_high_priority_batch_meets_its_deadline_under_a_normal_flood(
    broker: KafkaBroker,
    redis_server: RedisServer,
    store: BatchStore,
    make_topic,
    tmp_path: Path,
    per_job: int,
    kind: str,
    max_jobs: int,
    queued: int,
) -> None:
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        redis_server.url,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batching="message",
        batch_timeout_s=60.0,
        station_timeout_s=10.0,
        worker_max_jobs=max_jobs,
        stations_per_job=per_job,
        priority_field="priority",
        priorities={"high": PriorityLevel(timeout_s=3.0, boost_s=60.0), "normal": PriorityLevel(timeout_s=60.0)},
    )
    flood = [message([f"{kind}-{m}-{i}" for i in range(10)]) for m in range(40)]  # 5 s of work on one worker
    async with fleet(settings, workers=1):
        await produce(broker.bootstrap, topic, flood)

        async def backlog() -> bool:
            return await store.queue_depth() >= queued

        await wait_until(backlog, 30, "a backlog of normal station jobs")
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:  # one high-priority message by Kafka header
            await producer.send_and_wait(topic, message(["W-high-1", "W-high-2", "W-high-3"]), headers=[("priority", b"high")])
        finally:
            await producer.stop()
        high_id = f"{topic}:0:40"

        async def high_done() -> bool:
            return (await store.batch_meta(high_id)).get("state") == "uploaded"

        await wait_until(high_done, 30, "the high-priority upload")
        queued_when_high_done = await store.queue_depth()
        high = await store.batch_meta(high_id)
        await wait_until(lines_uploaded(out, 41), 60, "every normal batch too")
    payloads = {p["batch_id"]: p for p in read_uploads(out)}
    assert high["priority"] == "high" and payloads[high_id]["reason"] == "complete"
    assert int(high["finalized_ms"]) - int(high["created_ms"]) < 3000  # met its 3 s deadline
    assert queued_when_high_done > 0  # it overtook normal work that was still queued
    normal = [p for bid, p in payloads.items() if bid != high_id]
    assert len(normal) == 40 and all(p["reason"] == "complete" for p in normal)  # normal work not starved


@GROUPINGS
async def test_late_drop_counts_without_keeping(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path, per_job: int
) -> None:
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        redis_server.url,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batch_timeout_s=0.6,
        station_timeout_s=10.0,
        late="drop",
        stations_per_job=per_job,
    )
    batch_id = f"{topic}:0:0"
    async with fleet(settings, workers=1):
        await produce(broker.bootstrap, topic, [message(["S001", "SLOW-1"])])

        async def late() -> bool:
            return (await store.batch_meta(batch_id)).get("late") == "1"

        await wait_until(late, 30, "the late result to be counted")
        kept = await store.late_outcomes(batch_id)
    assert kept == {}
    assert read_uploads(out)[0]["missing"] == ["SLOW-1"]
