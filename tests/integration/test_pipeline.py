"""The pipeline end to end on a real redis-server and the real Kafka-protocol broker."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from tests.integration import processors
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

FULL = {"expected", "ok", "failed", "empty", "missing", "late"}


async def test_all_ok_one_upload_complete(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(target, broker.bootstrap, [topic], f"file://{out}")
    await produce(broker.bootstrap, topic, [message(["S001", "S002", "S003"])])
    async with fleet(settings, workers=1):
        await wait_until(lines_uploaded(out, 1), 30, "one upload")

        async def acked() -> bool:  # the upload's line is written before its ack
            return (await target_store.batch_meta(f"{topic}:0:0")).get("state") == "uploaded"

        await wait_until(acked, 30, "the upload acked")
        meta = await target_store.batch_meta(f"{topic}:0:0")
    [payload] = read_uploads(out)
    assert payload["reason"] == "complete"
    assert payload["batch_id"] == f"{topic}:0:0"
    assert [r["stationId"] for r in payload["results"]] == ["S001", "S002", "S003"]
    assert payload["summary"] == {"expected": 3, "ok": 3, "failed": 0, "empty": 0, "missing": 0, "late": 0}
    assert payload["failed"] == {} and payload["empty"] == [] and payload["missing"] == []
    assert payload["finalized_at"] >= payload["created_at"]
    assert meta["state"] == "uploaded"
    stats = await target_store.stats()
    assert stats["batches_uploaded"] == 1 and stats["batches_complete"] == 1 and stats["stations_ok"] == 3


@GROUPINGS
async def test_failures_and_hang_upload_at_deadline(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path, per_job: int
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(
        target, broker.bootstrap, [topic], f"file://{out}", batch_timeout_s=2.0, station_timeout_s=30.0, stations_per_job=per_job
    )
    stations = ["S001", "RAISE-1", "NONE-1", "HANG-1", "S002"]
    await produce(broker.bootstrap, topic, [message(stations)])
    async with fleet(settings, workers=1):
        await wait_until(lines_uploaded(out, 1), 30, "the deadline upload")
        meta = await target_store.batch_meta(f"{topic}:0:0")
    [payload] = read_uploads(out)
    assert payload["reason"] == "deadline"
    assert [r["stationId"] for r in payload["results"]] == ["S001", "S002"]
    assert payload["summary"] == {"expected": 5, "ok": 2, "failed": 1, "empty": 1, "missing": 1, "late": 0}
    assert payload["failed"]["RAISE-1"].startswith("ValueError: bad reading at RAISE-1")
    assert payload["empty"] == ["NONE-1"] and payload["missing"] == ["HANG-1"]
    assert meta["jobs"] == ("5" if per_job == 1 else "1")  # one job per station, or one for the batch
    # finalized at the deadline (Redis server time), not when the hanging station's 30 s budget ends
    lateness_ms = int(meta["finalized_ms"]) - int(meta["deadline_ms"])
    assert 0 <= lateness_ms < 1000, lateness_ms
    assert payload["finalized_at"] - payload["created_at"] >= 2.0


@GROUPINGS
async def test_station_budget_timeout_is_recorded_as_failed(
    broker: KafkaBroker, redis_server: RedisServer, make_topic, tmp_path: Path, per_job: int
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(
        redis_server.url,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batch_timeout_s=5.0,
        station_timeout_s=0.5,
        processor="tests.integration.processors:sync_process",
        stations_per_job=per_job,
    )
    await produce(broker.bootstrap, topic, [message(["S001", "SPIN-1", "BLOCK-1", "RAISE-2"])])
    try:
        async with fleet(settings, workers=1):
            await wait_until(lines_uploaded(out, 1), 30, "upload")
    finally:
        processors.release.set()  # let the abandoned threads end
        for t in threading.enumerate():
            if t.name == "station-processor":
                t.join(10)
        processors.release.clear()
    [payload] = read_uploads(out)
    assert payload["reason"] == "complete"  # every station reported: hung sync code cost only its station
    assert payload["summary"]["ok"] == 1 and payload["summary"]["failed"] == 3
    assert "timeout" in payload["failed"]["SPIN-1"] and "timeout" in payload["failed"]["BLOCK-1"]
    assert payload["failed"]["RAISE-2"].startswith("RuntimeError")


@GROUPINGS
async def test_bad_results_fail_only_their_station(
    broker: KafkaBroker, redis_server: RedisServer, make_topic, tmp_path: Path, per_job: int
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", stations_per_job=per_job)
    await produce(broker.bootstrap, topic, [message(["LIST-1", "HUGE-1", "NONJSON-1", "S009"])])
    async with fleet(settings, workers=1):
        await wait_until(lines_uploaded(out, 1), 30, "upload")
    [payload] = read_uploads(out)
    assert payload["reason"] == "complete"
    assert [r["stationId"] for r in payload["results"]] == ["S009"]
    assert "expected dict or None" in payload["failed"]["LIST-1"]
    assert "bytes" in payload["failed"]["HUGE-1"]
    assert "JSON" in payload["failed"]["NONJSON-1"]


async def test_poll_batching_merges_messages_and_stations(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}")
    # produced before the dispatcher starts, so one getmany returns all three
    await produce(broker.bootstrap, topic, [message(["A-1", "B-1"], 1), message(["B-1", "C-1"], 2), message(["A-1"], 3)])
    async with fleet(settings, workers=1):
        await wait_until(lines_uploaded(out, 1), 30, "upload")

        async def queue_empty() -> bool:  # the job leaves the queue in arq's finish, after its last record
            return await store.queue_depth() == 0

        await wait_until(queue_empty, 10, "the job to leave the queue")
    [payload] = read_uploads(out)
    assert payload["batch_id"] == f"{topic}:0:0"
    assert payload["summary"]["expected"] == 3  # one job per distinct station
    by_station = {r["stationId"]: r for r in payload["results"]}
    assert [r["stationId"] for r in payload["results"]] == ["A-1", "B-1", "C-1"]
    assert by_station["A-1"]["values"] == [1, 3]  # records merged in Kafka order
    assert by_station["B-1"]["values"] == [1, 2]


async def test_message_batching_one_batch_per_message(
    broker: KafkaBroker, redis_server: RedisServer, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", batching="message")
    await produce(broker.bootstrap, topic, [message(["S001", "S002"]), message(["S001", "S003"]), message(["S004"])])
    async with fleet(settings, workers=1):
        await wait_until(lines_uploaded(out, 3), 30, "three uploads")
    payloads = sorted(read_uploads(out), key=lambda p: p["batch_id"])
    assert [p["batch_id"] for p in payloads] == [f"{topic}:0:0", f"{topic}:0:1", f"{topic}:0:2"]
    assert [p["summary"]["expected"] for p in payloads] == [2, 2, 1]
    assert all(p["reason"] == "complete" for p in payloads)


@GROUPINGS
async def test_late_result_is_counted_and_upload_unchanged(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path, per_job: int
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(
        redis_server.url,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batch_timeout_s=0.6,
        station_timeout_s=10.0,
        late="record",
        stations_per_job=per_job,
    )
    await produce(broker.bootstrap, topic, [message(["S001", "SLOW-1"])])
    batch_id = f"{topic}:0:0"
    async with fleet(settings, workers=1):
        await wait_until(lines_uploaded(out, 1), 30, "deadline upload")

        async def late_counted() -> bool:
            return (await store.batch_meta(batch_id)).get("late") == "1"

        await wait_until(late_counted, 30, "the slow station's late result")
        late = await store.late_outcomes(batch_id)
        stored = await store.payload(batch_id)
        stats = await store.stats()
    [payload] = read_uploads(out)
    assert payload["summary"]["missing"] == 1 and payload["missing"] == ["SLOW-1"]
    assert stats["late_results"] == 1
    assert late["SLOW-1"].status == "ok"  # late=record keeps it for inspection
    assert stored is not None and _json(stored) == payload  # the uploaded body never changes
    assert len(read_uploads(out)) == 1


async def test_malformed_message_is_quarantined_and_partition_flows(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", batching="message")
    await produce(broker.bootstrap, topic, [b"{not json", b'{"stationData": []}', message(["S001"])])
    async with fleet(settings, workers=1):
        await wait_until(lines_uploaded(out, 1), 30, "the good message's upload")
        entries = await store.quarantined()
        offsets = await store.load_offsets([f"{topic}:0"])
    [payload] = read_uploads(out)
    assert payload["batch_id"] == f"{topic}:0:2"
    by_offset = {int(e["offset"]): e for e in entries}
    assert set(by_offset) == {0, 1}
    assert b"invalid JSON" in by_offset[0]["reason"] and by_offset[0]["value"] == b"{not json"
    assert b"is empty" in by_offset[1]["reason"]
    assert all(e["topic"].decode() == topic and e["partition"] == b"0" for e in entries)
    assert offsets == {f"{topic}:0": 3}
    assert (await store.stats())["messages_quarantined"] == 2


def _json(raw: bytes) -> Any:
    import orjson

    return orjson.loads(raw)


@pytest.mark.slow
async def test_uploaded_batch_expires_after_retention_and_leaves_no_keys(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", retention_s=1, batching="message")
    await produce(broker.bootstrap, topic, [message(["S001", "NONE-1"]), message(["S002"])])
    async with fleet(settings, workers=1):
        await wait_until(lines_uploaded(out, 2), 30, "two uploads")
        ttls: list[int] = []

        async def acked() -> bool:  # the ack sets the expiry; it follows the file line
            meta = await store.batch_meta(f"{topic}:0:0")
            if meta.get("state") == "uploaded" or not meta:  # (gone: it expired already)
                ttls.append(await store.batch_ttl_s(f"{topic}:0:0"))
                return True
            return False

        await wait_until(acked, 30, "the first batch's ack")

        async def index_pruned() -> bool:
            return await store.batch_ids(10) == []

        await wait_until(index_pruned, 30, "the batch index to forget expired batches")
        leftover = [k async for k in store.redis.scan_iter(match=f"*{topic}*")]
    assert ttls[0] <= 1 and ttls[0] != -1, ttls  # an expiry within the 1 s retention (-2: already expired)
    assert leftover == []  # no batch, input, outcome, payload or job key outlives the retention
