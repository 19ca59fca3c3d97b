"""The pipeline end to end on a real redis-server and the real Kafka-protocol broker."""

from __future__ import annotations

from pathlib import Path

from batchfleet.localstack import KafkaBroker, RedisServer
from batchfleet.store import BatchStore
from tests.integration.fleet import fleet, make_settings, message, produce, read_uploads, wait_until


async def test_all_ok_one_upload_complete(broker: KafkaBroker, redis_server: RedisServer, store: BatchStore,
                                          make_topic, tmp_path: Path) -> None:  # fmt: skip
    topic = await make_topic()
    out = tmp_path / "uploads.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}")
    await produce(broker.bootstrap, topic, [message(["S001", "S002", "S003"])])
    async with fleet(settings, workers=1):
        await wait_until(lambda: _count(out, 1), 30, "one upload")
    [payload] = read_uploads(out)
    assert payload["reason"] == "complete"
    assert payload["batch_id"] == f"{topic}:0:0"
    assert [r["stationId"] for r in payload["results"]] == ["S001", "S002", "S003"]
    assert payload["summary"] == {"expected": 3, "ok": 3, "failed": 0, "empty": 0, "missing": 0, "late": 0}
    assert payload["failed"] == {} and payload["empty"] == [] and payload["missing"] == []
    assert payload["finalized_at"] >= payload["created_at"]


async def _count(path: Path, n: int) -> bool:
    return len(read_uploads(path)) >= n
