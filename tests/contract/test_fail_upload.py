"""fail_upload.lua through BatchStore.fail_upload: an upload attempt failed; the batch is scheduled
for a retry or, with its budget spent, dead-lettered (keeping its keys)."""

from __future__ import annotations

from typing import Any

import pytest

from batchfleet.models import Claim
from tests.contract.harness import BATCH, Case, Ctx, Seen, claimed, counter, run_case, taken_over

SCRIPT = "fail_upload"


def fail(max_attempts: int, retry_delay_ms: int = 5_000) -> Any:
    async def when(ctx: Ctx, claim: Claim) -> tuple[str, int]:
        return await ctx.store.fail_upload(claim, retry_delay_ms=retry_delay_ms, max_attempts=max_attempts, error="HTTP 503")

    return when


async def then_retry(ctx: Ctx, seen: Seen) -> None:
    retry_at = seen.int(2)
    assert seen.reply == [b"retry", 1, retry_at]
    assert seen.t0 + 5_000 <= retry_at <= seen.t1 + 5_000
    assert seen.result == ("retry", 1)
    assert await ctx.zscore(ctx.due, BATCH) == retry_at
    assert await ctx.zscore(ctx.leases, BATCH) is None  # lease given back
    meta = await ctx.meta(BATCH)
    assert (meta["state"], meta["upload_failures"], meta["last_error"]) == ("finalized", "1", "HTTP 503")
    assert (await ctx.stats())["upload_failures"] == 1
    assert not await ctx.exists(ctx.dead)


async def failed_once(ctx: Ctx) -> Claim:
    """One attempt failed already (retry due at once), and the batch was claimed again."""
    first = await claimed(ctx)
    assert await ctx.store.fail_upload(first, retry_delay_ms=0, max_attempts=2, error="timeout") == ("retry", 1)
    again = await ctx.store.claim(BATCH, 60_000)
    assert again is not None
    return again


async def assert_dead(ctx: Ctx, seen: Seen, failures: int) -> None:
    assert seen.reply == [b"dead", failures]
    assert seen.result == ("dead", failures)
    meta = await ctx.meta(BATCH)
    dead_ms = int(meta["dead_ms"])
    assert seen.t0 <= dead_ms <= seen.t1
    assert (meta["state"], meta["upload_failures"], meta["last_error"]) == ("dead", str(failures), "HTTP 503")
    assert await ctx.zset(ctx.dead) == {BATCH: dead_ms}
    assert await ctx.zscore(ctx.due, BATCH) is None
    assert await ctx.zscore(ctx.leases, BATCH) is None
    assert await ctx.pttl(ctx.keys.batch(BATCH)) == -1  # kept until replayed
    stats = await ctx.stats()
    assert (stats["upload_failures"], stats["batches_dead_lettered"]) == (failures, 1)


async def then_dead_first(ctx: Ctx, seen: Seen) -> None:
    await assert_dead(ctx, seen, 1)


async def then_dead_after_retry(ctx: Ctx, seen: Seen) -> None:
    await assert_dead(ctx, seen, 2)


async def then_fenced(ctx: Ctx, seen: Seen) -> None:
    assert seen.kind() == "fenced" and counter(seen.reply[1]) == 2  # the current owner's token
    assert seen.result == ("fenced", 0)
    meta = await ctx.meta(BATCH)
    assert "upload_failures" not in meta and "last_error" not in meta
    assert await ctx.zscore(ctx.leases, BATCH) is not None  # the new owner's lease stays
    assert "upload_failures" not in await ctx.stats()


CASES = [
    Case("retry", "budget-left-due-at-retry-time", claimed, fail(max_attempts=3), then_retry),
    Case("dead", "budget-of-one-spent", claimed, fail(max_attempts=1), then_dead_first),
    Case("dead", "budget-spent-after-a-retry", failed_once, fail(max_attempts=2), then_dead_after_retry),
    Case("fenced", "lease-taken-over", taken_over, fail(max_attempts=1), then_fenced),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_fail_upload(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
