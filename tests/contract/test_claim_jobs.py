"""claim_jobs.lua through BatchStore.claim_jobs: start up to ``want`` queued arq jobs in one step,
with arq's own rule (queued, due, no in-progress key), setting each job's in-progress key."""

from __future__ import annotations

from typing import Any

import pytest

from batchfleet.keys import Keys
from tests.contract.harness import Case, Ctx, Seen, run_case

SCRIPT = "claim_jobs"
NOW_MS = 10_000
IN_PROGRESS_MS = 70_000
QUEUED = {"j1": 1_000, "j2": 2_000, "j3": 20_000}  # j3 is not due yet at NOW_MS


def claim_jobs(*job_ids: str, want: int) -> Any:
    async def when(ctx: Ctx, given: Any) -> list[tuple[str, int]]:
        return await ctx.store.claim_jobs(ctx.shard, list(job_ids), now_ms=NOW_MS, in_progress_ms=IN_PROGRESS_MS, want=want)

    return when


async def queued(ctx: Ctx) -> None:
    await ctx.redis.zadd(ctx.queue, QUEUED)


async def j1_in_progress(ctx: Ctx) -> None:
    await queued(ctx)
    await ctx.redis.set(Keys.in_progress("j1"), b"another worker")


async def assert_claimed(ctx: Ctx, seen: Seen, claimed: list[str], untouched: list[str]) -> None:
    pairs = [(job, QUEUED[job]) for job in claimed]
    assert seen.result == pairs
    assert [(bytes(seen.reply[i]).decode(), int(seen.reply[i + 1])) for i in range(0, len(seen.reply), 2)] == pairs
    for job in claimed:
        assert await ctx.redis.get(Keys.in_progress(job)) == b"1"
        assert 0 < await ctx.pttl(Keys.in_progress(job)) <= IN_PROGRESS_MS
    for job in untouched:
        assert not await ctx.exists(Keys.in_progress(job))
    assert await ctx.zset(ctx.queue) == QUEUED  # arq removes a job from the queue when it finishes


def then_claimed(claimed: list[str], untouched: list[str]) -> Any:
    async def then(ctx: Ctx, seen: Seen) -> None:
        await assert_claimed(ctx, seen, claimed, untouched)

    return then


async def then_skipped_in_progress(ctx: Ctx, seen: Seen) -> None:
    await assert_claimed(ctx, seen, ["j2"], ["j3"])
    assert await ctx.redis.get(Keys.in_progress("j1")) == b"another worker"  # not taken over


CASES = [
    Case("list", "due-ones-in-queue-order", queued, claim_jobs("j1", "j2", "j3", want=5), then_claimed(["j1", "j2"], ["j3"])),
    Case("list", "at-most-want", queued, claim_jobs("j1", "j2", want=1), then_claimed(["j1"], ["j2"])),
    Case("list", "in-progress-job-skipped", j1_in_progress, claim_jobs("j1", "j2", want=2), then_skipped_in_progress),
    Case("list", "job-not-queued-skipped", queued, claim_jobs("gone", "j2", want=2), then_claimed(["j2"], ["gone"])),
    Case("list", "nothing-claimable-empty-reply", queued, claim_jobs("j3", want=2), then_claimed([], ["j3"])),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_claim_jobs(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
