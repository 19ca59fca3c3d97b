"""create_batch.lua through BatchStore.create_batch: Kafka messages -> one open batch, its arq jobs
(groups of stations, or one per station for workers of an earlier release) and the partitions' next
offsets, atomically (or nothing at all)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchfleet.errors import FencedOffsetError, StaleOffsetError
from batchfleet.models import PartitionRange
from tests.contract.harness import BATCH, INC, Case, Ctx, Seen, nothing, open_batch, run_case, spec

SCRIPT = "create_batch"
QUEUE_LAG_MS = 600_000  # jobs are scored 10 minutes in the past (workers with a lagging clock)
INDEX_CAP = 100_000


async def create(ctx: Ctx, given: Any) -> Any:
    return await ctx.store.create_batch(spec("s1", "s2", timeout_s=30, queue_boost_s=5))


async def create_in_station_jobs(ctx: Ctx, given: Any) -> Any:
    return await ctx.store.create_batch(spec("s1", "s2", timeout_s=30, queue_boost_s=5, job_shape="station"))


async def create_in_two_groups(ctx: Ctx, given: Any) -> Any:
    return await ctx.store.create_batch(spec("s1", "s2", "s3", timeout_s=30, queue_boost_s=5, group_sizes=[2, 1]))


async def create_catching_stale(ctx: Ctx, given: Any) -> Any:
    with pytest.raises(StaleOffsetError) as info:
        await create(ctx, given)
    return info.value


async def assert_created(ctx: Ctx, seen: Seen, stations: tuple[str, ...] = ("s1", "s2"), jobs: int = 1) -> None:
    now_ms, deadline_ms = seen.int(1), seen.int(2)
    assert seen.t0 <= now_ms <= seen.t1
    assert deadline_ms == now_ms + 30_000
    assert seen.result == (True, now_ms)
    meta = await ctx.meta(BATCH)
    assert {k: meta[k] for k in ("state", "created_ms", "deadline_ms", "expected", "late", "jobs")} == {
        "state": "open",
        "created_ms": str(now_ms),
        "deadline_ms": str(deadline_ms),
        "expected": str(len(stations)),
        "late": "0",
        "jobs": str(jobs),
    }
    assert meta["topic"] == "T" and meta["timeout_ms"] == "30000" and meta["source"] == "0@10-11" and meta["inc"] == INC
    assert await ctx.hash(ctx.keys.inputs(BATCH)) == dict.fromkeys(stations, "")
    assert await ctx.zset(ctx.due) == {BATCH: deadline_ms}
    assert await ctx.zset(ctx.batches) == {BATCH: now_ms}
    assert await ctx.hash(ctx.offsets) == {"T:0": "12"}
    assert await ctx.stats() == {"batches_created": 1, "stations_dispatched": len(stations), "jobs_dispatched": jobs}


async def then_created(ctx: Ctx, seen: Seen) -> None:
    """One group job (no group sizes given) carries both stations' records."""
    await assert_created(ctx, seen)
    now_ms, deadline_ms = seen.int(1), seen.int(2)
    assert await ctx.zset(ctx.queue) == {ctx.keys.group_job_id(BATCH, 0, INC): now_ms - QUEUE_LAG_MS - 5_000}
    job = orjson.loads(await ctx.redis.get(ctx.keys.group_job(BATCH, 0, INC)))
    assert job["f"] == "run_group" and job["t"] is None
    stations = {"s1": [{"stationId": "s1", "v": 0}], "s2": [{"stationId": "s2", "v": 1}]}
    assert job["a"] == [stations, 30_000, deadline_ms]  # deadline appended in Redis time
    assert 0 < await ctx.pttl(ctx.keys.group_job(BATCH, 0, INC)) <= 30_000 + 60_000


async def then_created_in_groups(ctx: Ctx, seen: Seen) -> None:
    await assert_created(ctx, seen, ("s1", "s2", "s3"), jobs=2)
    score = seen.int(1) - QUEUE_LAG_MS - 5_000
    assert await ctx.zset(ctx.queue) == {ctx.keys.group_job_id(BATCH, 0, INC): score, ctx.keys.group_job_id(BATCH, 1, INC): score}
    groups = [orjson.loads(await ctx.redis.get(ctx.keys.group_job(BATCH, i, INC)))["a"][0] for i in (0, 1)]
    assert [list(g) for g in groups] == [["s1", "s2"], ["s3"]]  # station order kept


async def then_created_in_station_jobs(ctx: Ctx, seen: Seen) -> None:
    """The shape workers of an earlier release run: one job per station."""
    await assert_created(ctx, seen, jobs=2)
    now_ms, deadline_ms = seen.int(1), seen.int(2)
    score = now_ms - QUEUE_LAG_MS - 5_000
    assert await ctx.zset(ctx.queue) == {ctx.keys.job_id(BATCH, "s1"): score, ctx.keys.job_id(BATCH, "s2"): score}
    for i, station in enumerate(("s1", "s2")):
        job = orjson.loads(await ctx.redis.get(ctx.keys.job(BATCH, station)))
        assert job["f"] == "run_station"
        assert job["a"] == [[{"stationId": station, "v": i}], 30_000, deadline_ms]
        assert 0 < await ctx.pttl(ctx.keys.job(BATCH, station)) <= 30_000 + 60_000


async def existing_job(ctx: Ctx) -> None:
    await ctx.redis.set(ctx.keys.group_job(BATCH, 0, INC), b"an earlier job")


async def then_job_kept(ctx: Ctx, seen: Seen) -> None:
    await assert_created(ctx, seen)
    assert await ctx.redis.get(ctx.keys.group_job(BATCH, 0, INC)) == b"an earlier job"
    assert await ctx.zset(ctx.queue) == {}


async def offset_at_first(ctx: Ctx) -> None:
    await ctx.redis.hset(ctx.offsets, "T:0", 10)


async def full_index(ctx: Ctx) -> None:
    for start in range(0, INDEX_CAP, 10_000):
        await ctx.redis.zadd(ctx.batches, {f"old:0:{i}": i for i in range(start, start + 10_000)})


async def then_index_capped(ctx: Ctx, seen: Seen) -> None:
    assert seen.result == (True, seen.int(1))
    assert (await ctx.meta(BATCH))["state"] == "open"
    assert await ctx.redis.zcard(ctx.batches) == INDEX_CAP
    assert await ctx.zscore(ctx.batches, "old:0:0") is None  # the oldest entry made room
    assert await ctx.zscore(ctx.batches, BATCH) == seen.int(1)


async def offsets_ahead(ctx: Ctx) -> None:
    await ctx.redis.hset(ctx.offsets, "T:0", 11)


async def then_stale(ctx: Ctx, seen: Seen) -> None:
    assert [seen.kind(), seen.text(1), seen.int(2)] == ["stale", "T:0", 11]
    assert (seen.result.partition_field, seen.result.stored_offset) == ("T:0", 11)
    assert sorted(await ctx.redis.keys("*")) == [ctx.offsets.encode()]  # nothing written
    assert await ctx.hash(ctx.offsets) == {"T:0": "11"}


async def created_before(ctx: Ctx) -> int:
    await open_batch(ctx, "s1", "s2", ranges=[])
    return int((await ctx.meta(BATCH))["created_ms"])


async def create_again_with_fresh_offsets(ctx: Ctx, given: Any) -> Any:
    return await ctx.store.create_batch(spec("s1", "s2", "s3", ranges=[PartitionRange("T", 1, 5, 6)]))


async def then_exists(ctx: Ctx, seen: Seen) -> None:
    created_ms = seen.given
    assert [seen.kind(), seen.int(1)] == ["exists", created_ms]
    assert seen.result == (False, created_ms)
    assert (await ctx.meta(BATCH))["expected"] == "2"  # nothing written
    assert await ctx.hash(ctx.keys.inputs(BATCH)) == {"s1": "", "s2": ""}
    assert not await ctx.exists(ctx.keys.group_job(BATCH, 1, INC))
    assert await ctx.redis.zcard(ctx.queue) == 1
    assert not await ctx.exists(ctx.offsets)
    assert await ctx.stats() == {"batches_created": 1, "stations_dispatched": 2, "jobs_dispatched": 1}


async def create_expecting_other_offset(ctx: Ctx, given: Any) -> Any:
    """The dispatcher believes Redis holds next offset 7 for T:0; Redis holds none (lost in a failover)."""
    with pytest.raises(FencedOffsetError) as info:
        await ctx.store.create_batch(spec("s1", "s2", timeout_s=30), expected={"T:0": 7})
    return info.value


async def then_fenced(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"fenced", b"T:0", None]  # Lua false: Redis holds no offset for T:0
    assert (seen.result.partition_field, seen.result.expected, seen.result.stored_offset) == ("T:0", 7, None)
    assert await ctx.redis.keys("*") == [ctx.keys.stats(ctx.shard).encode()]  # nothing written but the counter
    assert (await ctx.stats())["ingest_fenced"] == 1


CASES = [
    Case("created", "batch-group-job-queue-offsets-due-index-stats", nothing, create, then_created),
    Case("created", "group-sizes-one-job-each-station-order-kept", nothing, create_in_two_groups, then_created_in_groups),
    Case("created", "one-station-jobs-for-earlier-workers", nothing, create_in_station_jobs, then_created_in_station_jobs),
    Case("created", "existing-job-key-neither-overwritten-nor-queued", existing_job, create, then_job_kept),
    Case("created", "stored-offset-equal-to-first-is-not-stale", offset_at_first, create, then_created),
    Case("created", "index-capped-at-newest-100000", full_index, create, then_index_capped),
    Case("fenced", "redis-lost-the-offset-nothing-written", nothing, create_expecting_other_offset, then_fenced),
    Case("stale", "offsets-already-ingested-nothing-written", offsets_ahead, create_catching_stale, then_stale),
    Case("exists", "same-batch-again-nothing-written", created_before, create_again_with_fresh_offsets, then_exists),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_create_batch(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
