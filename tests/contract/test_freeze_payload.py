"""freeze_payload.lua through BatchStore.freeze_payload: store a batch's upload body once, for the
current lease holder only."""

from __future__ import annotations

from typing import Any

import pytest

from batchfleet.models import Claim
from tests.contract.harness import BATCH, Case, Ctx, Seen, claimed, counter, run_case, taken_over


def freeze(body: bytes) -> Any:
    async def when(ctx: Ctx, claim: Claim) -> bytes | None:
        return await ctx.store.freeze_payload(claim, body)

    return when


async def frozen_before(ctx: Ctx) -> Claim:
    claim = await claimed(ctx)
    assert await ctx.store.freeze_payload(claim, b"first body") == b"first body"
    return claim


async def then_frozen_now(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"frozen", b"first body"]
    assert seen.result == b"first body"
    assert await ctx.redis.get(ctx.keys.payload(BATCH)) == b"first body"
    assert await ctx.pttl(ctx.keys.payload(BATCH)) == -1  # expires with the batch, after the ack
    assert (await ctx.meta(BATCH))["frozen_token"] == (await ctx.meta(BATCH))["owner_token"]


async def then_frozen_before(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"frozen", b"first body"]  # every attempt sends the same bytes
    assert seen.result == b"first body"
    assert await ctx.redis.get(ctx.keys.payload(BATCH)) == b"first body"
    # written again although the body existed, so a WAIT right after covers it
    assert (await ctx.meta(BATCH))["frozen_token"] == (await ctx.meta(BATCH))["owner_token"]


async def then_fenced(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"fenced"]
    assert seen.result is None
    assert not await ctx.exists(ctx.keys.payload(BATCH))
    assert counter((await ctx.meta(BATCH))["owner_token"]) == 2


async def batch_expired(ctx: Ctx) -> Claim:
    """A claimer stalled so long that the batch was uploaded by another and its keys expired."""
    claim = await claimed(ctx)
    await ctx.redis.delete(*ctx.keys.batch_keys(BATCH))
    return claim


async def then_fenced_not_recreated(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"fenced"]
    assert seen.result is None
    assert not await ctx.exists(ctx.keys.payload(BATCH))
    assert not await ctx.exists(ctx.keys.batch(BATCH))


SCRIPT = "freeze_payload"
CASES = [
    Case("frozen", "first-freeze-stores-body", claimed, freeze(b"first body"), then_frozen_now),
    Case("frozen", "second-freeze-returns-stored-body", frozen_before, freeze(b"other body"), then_frozen_before),
    Case("fenced", "lease-taken-over", taken_over, freeze(b"stale body"), then_fenced),
    Case("fenced", "batch-expired-payload-not-recreated", batch_expired, freeze(b"stale body"), then_fenced_not_recreated),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_freeze_payload(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
