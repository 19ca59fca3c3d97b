"""`batchfleet status` and `batchfleet inspect` against a live fleet: their JSON matches Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchfleet.ops import STAT_COUNTERS
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker
from tests.integration import uploadsink
from tests.integration.fleet import GROUPINGS, REPO, RedisTarget, fleet, make_settings, message, produce, settings_env, wait_until


async def cli(env: dict[str, str], *args: str) -> Any:
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "batchfleet", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return orjson.loads(done.stdout) if "--json" in args else done.stdout


@pytest.mark.slow
@GROUPINGS
async def test_status_and_inspect_match_redis(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path, per_job: int
) -> None:
    topic = await make_topic()
    with uploadsink.HttpSink(always_fail=True) as sink:
        settings = make_settings(
            target,
            broker.bootstrap,
            [topic],
            sink.url,
            batching="message",
            upload_max_attempts=1,
            batch_timeout_s=60.0,
            station_timeout_s=120.0,
            stations_per_job=per_job,
        )
        env = settings_env(settings)
        async with fleet(settings, workers=1):
            await produce(
                broker.bootstrap,
                topic,
                [
                    message(["S001", "RAISE-1", "NONE-1"]),  # offset 0: complete -> upload fails -> dead
                    b'{"stationData": "nope"}',  # offset 1: quarantined
                    message(["S002", "HANG-1"]),  # offset 2: stays open (HANG never reports)
                ],
            )
            dead_id, open_id = f"{topic}:0:0", f"{topic}:0:2"

            async def settled() -> bool:
                counts = await target_store.counts()
                return counts["dead"] == 1 and counts["quarantined"] == 1 and len(await target_store.batch_outcomes(open_id)) == 1

            await wait_until(settled, 30, "a dead batch, a quarantined message and a half-done open batch")
            status = await cli(env, "status", "--json")
            detail = await cli(env, "inspect", "batch", dead_id, "--json")
            listed = await cli(env, "inspect", "batches", "--json")
            open_only = await cli(env, "inspect", "batches", "--state", "open", "--json")
            dead = await cli(env, "inspect", "dead", "--json")
            quarantine = await cli(env, "inspect", "quarantine", "--json")
            plain = await cli(env, "status")
            counts, stats = await target_store.counts(), await target_store.stats()
            dead_meta = await target_store.batch_meta(dead_id)
            q_entry = (await target_store.quarantined())[0]

    # status
    assert status["counts"] == counts and status["counters"] == dict.fromkeys(STAT_COUNTERS, 0) | stats  # zeros included
    assert counts["dead"] == 1 and counts["quarantined"] == 1 and counts["open"] == 1
    [open_row] = status["open_batches"]
    assert open_row["batch_id"] == open_id and open_row["done"] == 1 and open_row["expected"] == 2
    assert 0 < open_row["deadline_in_s"] <= 60
    roles = {p["role"] for p in status["processes"]}
    assert {"dispatcher", "worker", "aggregator"} <= roles
    assert "open batches" in plain and open_id in plain
    # inspect batch
    assert detail["meta"]["state"] == "dead" == dead_meta["state"]
    by_station = {s["station"]: s for s in detail["stations"]}
    assert by_station["S001"]["outcome"] == "ok" and by_station["NONE-1"]["outcome"] == "empty"
    assert by_station["RAISE-1"]["error"].startswith("ValueError: bad reading")
    assert by_station["S001"]["attempt"] == 1 and by_station["S001"]["worker"]
    # every station of a job keeps its own attempt, worker and time
    assert all(row["attempt"] == 1 and row["worker"] and row["duration_ms"] >= 0 for row in by_station.values())
    assert detail["meta"]["jobs"] == ("3" if per_job == 1 else "1") and detail["meta"]["expected"] == "3"
    # inspect batches: newest first, filter works
    assert [r["batch_id"] for r in listed] == [open_id, dead_id]
    assert [r["batch_id"] for r in open_only] == [open_id]
    # dead-letter and quarantine lists carry their reasons
    assert dead == [
        {
            "batch_id": dead_id,
            "topic": topic,
            "dead_ms": int(dead_meta["dead_ms"]),
            "upload_failures": 1,
            "last_error": dead_meta["last_error"],
        }
    ]
    assert "503" in dead[0]["last_error"]
    [q] = quarantine
    assert q["id"] == f"{topic}:0:1" and q["offset"] == 1 and q["topic"] == topic
    assert q["reason"] == q_entry["reason"].decode() and "not a list" in q["reason"]
    assert len(sink.requests) == 1


async def test_inspect_replays_dead_and_redispatches_quarantined(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(target, broker.bootstrap, [topic], f"file://{out}", batching="message")
    env = settings_env(settings)
    fixed = tmp_path / "fixed.json"
    fixed.write_bytes(message(["S009"]))
    async with fleet(settings, workers=1):
        await produce(broker.bootstrap, topic, [b'{"stationData": [{"id": "S009"}]}'])

        async def quarantined() -> bool:
            return (await target_store.counts())["quarantined"] == 1

        await wait_until(quarantined, 30, "the quarantine")
        said = await cli(env, "inspect", "quarantine", "--redispatch", f"{topic}:0:0", "--value-file", str(fixed))
        assert f"re-dispatched as {topic}:0:1" in said

        async def uploaded() -> bool:
            return (await target_store.stats()).get("batches_uploaded", 0) == 1

        await wait_until(uploaded, 30, "the re-dispatched message's upload")
        [entry] = await cli(env, "inspect", "quarantine", "--json")
    assert entry["redispatched"] == f"{topic}:0:1"
    assert orjson.loads(out.read_bytes().splitlines()[0])["batch_id"] == f"{topic}:0:1"
