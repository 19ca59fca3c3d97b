"""claim_batch.lua through BatchStore.claim: finalize a due batch (if still open) and lease its
upload to one aggregator, with a fencing token that grows with every claim."""

from __future__ import annotations

from typing import Any

import pytest

from batchfleet.models import Claim
from tests.contract.harness import (
    BATCH,
    Case,
    Ctx,
    Seen,
    claimed,
    counter,
    dead,
    open_batch,
    record,
    run_case,
    uploaded,
)

SCRIPT = "claim_batch"
LEASE_MS = 30_000


async def claim(ctx: Ctx, given: Any) -> Claim | None:
    return await ctx.store.claim(BATCH, LEASE_MS)


async def assert_claimed(ctx: Ctx, seen: Seen, *, reason: str, done: int, token: int = 1) -> Claim:
    """The reply and state every successful claim leaves: finalized, leased to this token."""
    assert seen.kind() == "claimed"
    now_ms = seen.int(2)
    assert seen.t0 <= now_ms <= seen.t1
    issued = seen.text(1)
    assert counter(issued) == token and len(issued.partition("-")[2]) >= 8  # COUNTER-NONCE
    result = seen.result
    assert isinstance(result, Claim)
    assert (result.batch_id, result.token, result.now_ms, result.reason) == (BATCH, issued, now_ms, reason)
    meta = await ctx.meta(BATCH)
    assert result.meta == meta  # the reply carries the meta as written
    assert (meta["state"], meta["reason"], meta["done"], meta["owner_token"]) == ("finalized", reason, str(done), issued)
    assert result.stations == ["s1", "s2"]
    assert await ctx.zscore(ctx.due, BATCH) is None
    assert await ctx.zscore(ctx.leases, BATCH) == now_ms + LEASE_MS
    assert await ctx.redis.get(ctx.fence) == str(token).encode()
    return result


async def past_deadline_one_done(ctx: Ctx) -> None:
    await open_batch(ctx, "s1", "s2", timeout_s=0)
    await record(ctx, "s1")


async def then_deadline(ctx: Ctx, seen: Seen) -> None:
    result = await assert_claimed(ctx, seen, reason="deadline", done=1)
    assert (await ctx.meta(BATCH))["finalized_ms"] == str(seen.int(2))
    assert list(result.outcomes) == ["s1"] and result.outcomes["s1"].status == "ok"
    assert seen.reply[5] is None and result.payload is None  # nothing frozen yet
    assert result.first_claim


async def all_done(ctx: Ctx) -> None:
    await open_batch(ctx, "s1", "s2")
    await record(ctx, "s1", "s2")


async def then_complete(ctx: Ctx, seen: Seen) -> None:
    result = await assert_claimed(ctx, seen, reason="complete", done=2)
    assert set(result.outcomes) == {"s1", "s2"}


async def quorum_reached(ctx: Ctx) -> None:
    await open_batch(ctx, "s1", "s2", quorum_needed=1)
    await record(ctx, "s1")


async def then_quorum(ctx: Ctx, seen: Seen) -> None:
    await assert_claimed(ctx, seen, reason="quorum", done=1)


async def lease_ran_out(ctx: Ctx) -> Claim:
    """Claimed with a lease of 0 ms and a frozen payload: the claimer is presumed dead."""
    first = await claimed(ctx, lease_ms=0)
    assert await ctx.store.freeze_payload(first, b"the frozen body") == b"the frozen body"
    return first


async def then_taken_over(ctx: Ctx, seen: Seen) -> None:
    first: Claim = seen.given
    result = await assert_claimed(ctx, seen, reason="deadline", done=0, token=2)
    meta = await ctx.meta(BATCH)
    assert meta["finalized_ms"] == first.meta["finalized_ms"]  # finalized once, not again
    assert meta["claims"] == "2" and not result.first_claim
    assert seen.reply[5] == b"the frozen body" and result.payload == b"the frozen body"


async def open_not_due(ctx: Ctx) -> None:
    await open_batch(ctx, "s1", "s2")


async def then_not_due_open(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"not_due"]
    assert seen.result is None
    meta = await ctx.meta(BATCH)
    assert meta["state"] == "open" and "owner_token" not in meta
    assert await ctx.zscore(ctx.due, BATCH) == int(meta["deadline_ms"])
    assert not await ctx.exists(ctx.leases) and not await ctx.exists(ctx.fence)


async def leased_to_another(ctx: Ctx) -> Claim:
    return await claimed(ctx, lease_ms=60_000)


async def then_not_due_leased(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"not_due"]
    assert seen.result is None
    assert counter((await ctx.meta(BATCH))["owner_token"]) == 1
    assert await ctx.zscore(ctx.leases, BATCH) == seen.given.now_ms + 60_000
    assert await ctx.redis.get(ctx.fence) == b"1"


async def index_without_batch(ctx: Ctx) -> None:
    """The batch expired, but the due and lease indexes still list it."""
    await ctx.redis.zadd(ctx.due, {BATCH: 0})
    await ctx.redis.zadd(ctx.leases, {BATCH: 0})


async def uploaded_still_indexed(ctx: Ctx) -> None:
    await uploaded(ctx)
    await index_without_batch(ctx)


async def dead_still_indexed(ctx: Ctx) -> None:
    await dead(ctx)
    await index_without_batch(ctx)


def then_gone(state: str | None) -> Any:
    async def then(ctx: Ctx, seen: Seen) -> None:
        assert seen.reply == [b"gone"]
        assert seen.result is None
        assert await ctx.zscore(ctx.due, BATCH) is None  # index cleaned
        assert await ctx.zscore(ctx.leases, BATCH) is None
        meta = await ctx.meta(BATCH)
        if state is None:
            assert meta == {} and not await ctx.exists(ctx.fence)
        else:  # claimed once (by the given), not again
            assert (meta["state"], meta["claims"], counter(meta["owner_token"])) == (state, "1", 1)
            assert await ctx.redis.get(ctx.fence) == b"1"

    then.__name__ = f"then_gone_{state}"
    return then


CASES = [
    Case("claimed", "deadline-passed-finalized-reason-deadline", past_deadline_one_done, claim, then_deadline),
    Case("claimed", "every-station-done-reason-complete", all_done, claim, then_complete),
    Case("claimed", "quorum-before-deadline-reason-quorum", quorum_reached, claim, then_quorum),
    Case("claimed", "lease-ran-out-taken-over-larger-token", lease_ran_out, claim, then_taken_over),
    Case("not_due", "open-before-deadline", open_not_due, claim, then_not_due_open),
    Case("not_due", "leased-to-another-aggregator", leased_to_another, claim, then_not_due_leased),
    Case("gone", "batch-expired-index-cleaned", index_without_batch, claim, then_gone(None)),
    Case("gone", "already-uploaded-index-cleaned", uploaded_still_indexed, claim, then_gone("uploaded")),
    Case("gone", "dead-lettered-index-cleaned", dead_still_indexed, claim, then_gone("dead")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_claim_batch(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
