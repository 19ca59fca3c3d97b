"""split_group.lua through BatchStore.split_group: a group job that runs again (its worker died) gives
each of its stations without an outcome a one-station job; recorded stations are not run again, and a
repeated split queues nothing twice."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.harness import BATCH, INC, Case, Ctx, Seen, claimed, nothing, open_batch, record, run_case

SCRIPT = "split_group"
SCORE = 1_700_000_000_000  # the group's own queue score: its re-runs keep its place and priority
EXPIRE_MS = 90_000


def job(station: str) -> bytes:
    return b'{"f":"run_station","a":[[{"stationId":"' + station.encode() + b'"}],5000,1],"t":2}'


async def split(ctx: Ctx, given: Any) -> Any:
    jobs = {station: job(station) for station in ("s1", "s2", "s3")}
    return await ctx.store.split_group(BATCH, jobs, score=SCORE, job_expire_ms=EXPIRE_MS, incarnation=INC)


async def s2_recorded(ctx: Ctx) -> None:
    await open_batch(ctx, "s1", "s2", "s3")
    await record(ctx, "s2")


async def then_split(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"split", 2, 1]
    assert seen.result == ("split", 2, 1)
    queued = await ctx.zset(ctx.queue)
    assert {ctx.keys.job_id(BATCH, "s1", INC), ctx.keys.job_id(BATCH, "s3", INC)} <= set(queued)
    assert ctx.keys.job_id(BATCH, "s2", INC) not in queued  # it has an outcome: not run again
    assert queued[ctx.keys.job_id(BATCH, "s1", INC)] == SCORE
    assert await ctx.redis.get(ctx.keys.job(BATCH, "s3", INC)) == job("s3")
    assert 0 < await ctx.pttl(ctx.keys.job(BATCH, "s1", INC)) <= EXPIRE_MS
    assert not await ctx.exists(ctx.keys.job(BATCH, "s2", INC))


async def split_before(ctx: Ctx) -> None:
    await s2_recorded(ctx)
    assert await split(ctx, None) == ("split", 2, 1)
    await ctx.redis.set(ctx.keys.job(BATCH, "s1", INC), b"running since the first split")


async def then_nothing_twice(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"split", 0, 1]
    assert await ctx.redis.get(ctx.keys.job(BATCH, "s1", INC)) == b"running since the first split"  # NX: kept
    station_jobs = [m for m in await ctx.zset(ctx.queue) if "#" not in m]
    assert sorted(station_jobs) == sorted([ctx.keys.job_id(BATCH, "s1", INC), ctx.keys.job_id(BATCH, "s3", INC)])


async def finalized(ctx: Ctx) -> None:
    await claimed(ctx, "s1", "s2", "s3")


async def then_closed(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"closed", b"finalized"]
    assert seen.result == ("closed", 0, 0)
    assert [await ctx.exists(ctx.keys.job(BATCH, s, INC)) for s in ("s1", "s2", "s3")] == [False, False, False]


async def then_gone(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"closed", b"gone"]
    assert await ctx.redis.keys("*") == []  # nothing written


async def created_again(ctx: Ctx) -> None:
    """Redis lost the group's batch; the dispatcher created it again, as another incarnation."""
    await open_batch(ctx, "s1", "s2", "s3", incarnation="2b0b2b0b")


async def then_stale(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"stale", b"2b0b2b0b"]
    assert seen.result == ("stale", 0, 0)
    assert [await ctx.exists(ctx.keys.job(BATCH, s, INC)) for s in ("s1", "s2", "s3")] == [False, False, False]
    assert all("#" in m for m in await ctx.zset(ctx.queue))  # only the new incarnation's own group job


CASES = [
    Case("split", "one-job-per-station-without-outcome", s2_recorded, split, then_split),
    Case("split", "repeated-split-queues-nothing-twice", split_before, split, then_nothing_twice),
    Case("closed", "batch-finalized-nothing-re-run", finalized, split, then_closed),
    Case("closed", "batch-gone-nothing-written", nothing, split, then_gone),
    Case("stale", "batch-created-again-nothing-re-run", created_again, split, then_stale),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_split_group(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
