"""SIGTERM for every role: drain, commit, exit 0; nothing lost, no claim left abandoned.  JSON logs."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from tests.integration import uploadsink
from tests.integration.fleet import Proc, fleet, make_settings, message, produce, read_uploads, settings_env, wait_until


async def test_sigterm_aggregator_mid_upload_finishes_it(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    with uploadsink.HttpSink() as sink:
        sink.delay_s = 2.0  # every upload takes 2 s
        settings = make_settings(redis_server.url, broker.bootstrap, [topic], sink.url)
        agg = Proc("aggregator", settings_env(settings), tmp_path / "aggregator.log")
        try:
            async with fleet(settings, workers=1, aggregators=0):
                await produce(broker.bootstrap, topic, [message(["S001", "S002"])])

                async def uploading() -> bool:
                    return len(sink.requests) == 1

                await wait_until(uploading, 30, "the upload to start")
                agg.signal(signal.SIGTERM)
                code = await asyncio.to_thread(agg.popen.wait, 20)
                meta = await store.batch_meta(f"{topic}:0:0")
                counts = await store.counts()
        finally:
            agg.kill()  # a no-op once it exited by itself
    assert code == 0
    assert meta["state"] == "uploaded" and len(sink.requests) == 1
    assert counts["open"] == 0 and counts["leased"] == 0  # no claimed-but-abandoned batch


@pytest.mark.slow
async def test_sigterm_dispatcher_commits_and_loses_nothing(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", batching="message", log_format="json")
    env = settings_env(settings)
    async with fleet(settings, workers=1, dispatchers=0):
        first = Proc("dispatcher", env, tmp_path / "dispatcher-1.log")
        producing = asyncio.create_task(produce(broker.bootstrap, topic, [message([f"S{i}"]) for i in range(60)]))

        async def some() -> bool:
            return (await store.stats()).get("batches_created", 0) >= 5

        await wait_until(some, 30, "the first batches")
        first.signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.popen.wait, 20)
        await producing
        second = Proc("dispatcher", env, tmp_path / "dispatcher-2.log")
        try:

            async def all_uploaded() -> bool:
                return (await store.stats()).get("batches_uploaded", 0) >= 60

            await wait_until(all_uploaded, 60, "60 uploads")

            async def second_running() -> bool:
                return bool(await store.live_processes("dispatcher"))

            await wait_until(second_running, 30, "the second dispatcher's heartbeat")
        finally:
            assert second.stop() == 0
        stats = await store.stats()
    assert code == 0
    ids = Counter(p["batch_id"] for p in read_uploads(out))
    assert len(ids) == 60 and set(ids.values()) == {1} and stats["batches_created"] == 60
    # JSON log lines carry the batch id and topic
    lines = [orjson.loads(line) for line in (tmp_path / "dispatcher-1.log").read_bytes().splitlines() if line.startswith(b"{")]
    created = [ln for ln in lines if "created" in ln["msg"] and "batch_id" in ln]
    assert created and all(ln["topic"] == topic and ln["batch_id"].startswith(topic) for ln in created)
