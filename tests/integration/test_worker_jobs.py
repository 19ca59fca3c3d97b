"""Station jobs on a real redis-server: the batched claim, records carried in the job, and the
checks that keep a worker from running stations of a batch that is already finalized."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from arq.constants import in_progress_key_prefix, job_key_prefix

from batchfleet.keys import ARQ_IN_PROGRESS_PREFIX, ARQ_JOB_PREFIX, Keys
from batchfleet.models import BatchSpec, PartitionRange
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.workers.main import run_worker
from batchfleet_dev.localstack import RedisServer
from tests.integration.fleet import REPO, TEST_SHARDS, make_settings, settings_env, wait_until

KEYS = Keys("bf", TEST_SHARDS)


def _settings(redis_server: RedisServer, **overrides: Any) -> Settings:
    return make_settings(redis_server.url, "127.0.0.1:9", ["t"], "tests.integration.uploadsink:collect", **overrides)


def _spec(batch_id: str, stations: list[str], *, timeout_s: float = 60.0) -> BatchSpec:
    topic, partition, offset = batch_id.rsplit(":", 2)
    return BatchSpec(
        batch_id=batch_id,
        topic=topic,
        timeout_s=timeout_s,
        retention_s=60,
        stations={s: [{"stationId": s, "v": i}] for i, s in enumerate(stations)},
        ranges=[PartitionRange(topic, int(partition), int(offset), int(offset) + 1)],
    )


async def _queue(store: BatchStore, job_ids: dict[str, float]) -> None:
    for job_id, score in job_ids.items():
        await store.redis.zadd(store.keys.queue(0), {job_id: score})


def test_arq_key_prefixes_match_arq() -> None:
    assert (ARQ_JOB_PREFIX, ARQ_IN_PROGRESS_PREFIX) == (job_key_prefix, in_progress_key_prefix)


async def test_claim_takes_only_queued_due_unclaimed_jobs(store: BatchStore) -> None:
    now = int(time.time() * 1000)
    await _queue(store, {"due-1": now - 5, "future": now + 60_000, "running": now - 4, "due-2": now - 3})
    await store.redis.set(KEYS.in_progress("running"), b"1")
    claimed = await store.claim_jobs(0, ["due-1", "future", "running", "gone", "due-2"], now_ms=now, in_progress_ms=30_000, want=10)
    assert claimed == [("due-1", now - 5), ("due-2", now - 3)]
    ttl = await store.redis.pttl(KEYS.in_progress("due-1"))
    assert 29_000 < ttl <= 30_000
    assert not await store.redis.exists(KEYS.in_progress("future"), KEYS.in_progress("gone"))
    # claimed once: a second worker gets nothing
    assert await store.claim_jobs(0, ["due-1", "due-2"], now_ms=now, in_progress_ms=30_000, want=10) == []


async def test_claim_takes_at_most_the_free_slots_in_queue_order(store: BatchStore) -> None:
    now = int(time.time() * 1000)
    ids = [f"j{i}" for i in range(6)]
    await _queue(store, {job_id: now - 100 + i for i, job_id in enumerate(ids)})
    assert [j for j, _ in await store.claim_jobs(0, ids, now_ms=now, in_progress_ms=5_000, want=2)] == ["j0", "j1"]
    assert [j for j, _ in await store.claim_jobs(0, ids, now_ms=now, in_progress_ms=5_000, want=3)] == ["j2", "j3", "j4"]
    assert await store.claim_jobs(0, ids, now_ms=now, in_progress_ms=5_000, want=0) == []


async def test_station_job_carries_its_records_budget_and_deadline(store: BatchStore) -> None:
    created, created_ms = await store.create_batch(_spec("t:0:0", ["S1", "S2"], timeout_s=7.5))
    assert created
    raw = await store.redis.get(KEYS.job("t:0:0", "S2"))
    job = orjson.loads(raw)
    assert job["f"] == "run_station" and job["k"] == {}
    assert job["a"] == [[{"stationId": "S2", "v": 1}], 7500, created_ms + 7500]  # records, budget_ms, deadline_ms
    meta = await store.batch_meta("t:0:0")
    assert int(meta["deadline_ms"]) == job["a"][2]
    # the inputs hash holds the expected stations; their records live in the jobs
    assert await store.redis.hgetall(KEYS.inputs("t:0:0")) == {b"S1": b"", b"S2": b""}


async def test_a_batchfleet_worker_and_a_plain_arq_worker_share_a_queue(
    redis_server: RedisServer, store: BatchStore, tmp_path: Path
) -> None:
    """Both claim protocols guard the same in-progress keys: every station runs and is recorded once
    (a plain arq worker serves one queue: the fleet has one shard)."""
    settings = _settings(redis_server, worker_max_jobs=5, shards=1)
    stations = [f"W-{i:03d}" for i in range(400)]  # 50 ms each: long enough for both workers to take some
    store = BatchStore.from_settings(settings, name="test-one-shard")
    await store.create_batch(_spec("t:0:0", stations))
    log = (tmp_path / "arq.log").open("wb")
    arq = subprocess.Popen(  # noqa: ASYNC220 (started once, never waited on in the loop)
        [sys.executable, "-m", "arq", "batchfleet.workers.WorkerSettings"],
        env=settings_env(settings),
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    ours = asyncio.create_task(run_worker(settings))
    try:
        await wait_until(lambda: _all_recorded(store, "t:0:0", len(stations)), 60, "every station recorded")
    finally:
        ours.cancel()
        arq.terminate()
        arq.wait(20)
        log.close()
        await asyncio.gather(ours, return_exceptions=True)
    outcomes = await store.batch_outcomes("t:0:0")
    assert sorted(outcomes) == stations and all(o.status == "ok" for o in outcomes.values())
    assert len({o.worker for o in outcomes.values()}) == 2, "both workers ran stations"
    stats = await store.stats()
    assert stats.get("duplicate_results", 0) == 0 and stats["stations_ok"] == len(stations)
    assert all(o.attempt == 1 for o in outcomes.values()), "no station was started twice"
    await store.aclose()


def test_a_plain_arq_worker_refuses_a_fleet_of_several_shards(redis_server: RedisServer) -> None:
    """It would serve one shard's queue only (and on a cluster arq's own finish is cross-slot)."""
    done = subprocess.run(
        [sys.executable, "-m", "arq", "batchfleet.workers.WorkerSettings"],
        env=settings_env(_settings(redis_server, shards=2)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "BATCHFLEET_SHARDS=1" in done.stderr and "batchfleet worker" in done.stderr


async def _all_recorded(store: BatchStore, batch_id: str, n: int) -> bool:
    return int(await store.redis.hlen(store.keys.outcomes(batch_id))) >= n


async def test_stations_of_a_batch_past_its_finalized_deadline_are_skipped(redis_server: RedisServer, store: BatchStore) -> None:
    """The job's deadline tells the worker to read the batch state first; a finalized batch's stations
    are skipped, not run and recorded late."""
    await store.create_batch(_spec("t:0:0", [f"S{i}" for i in range(20)], timeout_s=0.2))
    await asyncio.sleep(0.3)
    await store.redis.hset(KEYS.batch("t:0:0"), "state", "finalized")  # as the aggregator does at the deadline
    await run_worker(_settings(redis_server), burst=True)
    stats = await store.stats()
    assert stats.get("late_results", 0) == 0
    assert await store.redis.hlen(KEYS.outcomes("t:0:0")) == 0
    assert await store.queue_depth() == 0


async def test_after_one_late_result_a_worker_skips_the_batch(redis_server: RedisServer, store: BatchStore) -> None:
    """A batch finalized before its deadline (quorum): the first station this worker runs comes back
    late; the worker then checks the state before each further station of that batch and skips them."""
    await store.create_batch(_spec("t:0:0", [f"S{i}" for i in range(10)], timeout_s=600))
    await store.redis.hset(KEYS.batch("t:0:0"), "state", "finalized")
    await run_worker(_settings(redis_server, worker_max_jobs=1), burst=True)
    stats = await store.stats()
    assert stats["late_results"] == 1
    assert await store.queue_depth() == 0


async def test_a_repeated_ack_changes_nothing(store: BatchStore) -> None:
    """An aggregator retries an ack whose reply it never got (Redis killed right after running it):
    the batch stays uploaded once, with the first ack's time and one count in the stats."""
    from batchfleet.models import Outcome

    await store.create_batch(_spec("t:0:0", ["S1"]))
    assert (await store.record_outcome("t:0:0", "S1", Outcome(status="ok", result={"v": 1}))).status == "complete"
    claim = await store.claim("t:0:0", lease_ms=30_000)
    assert claim is not None
    assert await store.freeze_payload(claim, b"{}") == b"{}"
    first = await store.ack_upload(claim, retention_s=60, upload_ms=1.0)
    again = await store.ack_upload(claim, retention_s=60, upload_ms=2.0)
    assert first is not None and again == first
    stats = await store.stats()
    assert stats["batches_uploaded"] == 1 and stats["batches_complete"] == 1
    assert await store.recent_batch_ids() == ["t:0:0"]
