"""replay_batch.lua through BatchStore.replay: a dead-lettered batch gets a fresh upload budget and
keeps its frozen payload."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract.harness import BATCH, Case, Ctx, Seen, claimed, dead, nothing, run_case

SCRIPT = "replay_batch"


async def replay(ctx: Ctx, given: Any) -> tuple[bool, str]:
    return await ctx.store.replay(BATCH)


async def then_replayed(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"replayed"]
    assert seen.result == (True, "dead")
    meta = await ctx.meta(BATCH)
    assert (meta["state"], meta["upload_failures"], meta["replays"]) == ("finalized", "0", "1")
    assert not await ctx.exists(ctx.dead)
    assert await ctx.zscore(ctx.due, BATCH) == 0  # due now
    assert await ctx.redis.get(ctx.keys.payload(BATCH)) == b'{"frozen": true}'  # same body as before
    assert (await ctx.stats())["batches_replayed"] == 1


async def then_not_dead(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"not_dead", b"finalized"]
    assert seen.result == (False, "finalized")
    meta = await ctx.meta(BATCH)
    assert meta["state"] == "finalized" and "replays" not in meta
    assert await ctx.zscore(ctx.due, BATCH) is None  # leased, not re-queued
    assert "batches_replayed" not in await ctx.stats()


async def then_missing(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"not_dead", b"missing"]
    assert seen.result == (False, "missing")
    assert await ctx.redis.keys("*") == []


CASES = [
    Case("replayed", "dead-batch-due-now-payload-kept", dead, replay, then_replayed),
    Case("not_dead", "finalized-batch-unchanged", claimed, replay, then_not_dead),
    Case("not_dead", "no-such-batch", nothing, replay, then_missing),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_replay_batch(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
