"""ack_upload.lua through BatchStore.ack_upload: the upload succeeded; the batch is marked uploaded
and every key of it gets the same TTL."""

from __future__ import annotations

import pytest

from batchfleet.models import Claim
from tests.contract.harness import BATCH, Case, Ctx, Seen, claimed, counter, open_batch, record, run_case, taken_over

SCRIPT = "ack_upload"
RETENTION_S = 3600
RECENT_KEPT = 100
SLOT_MS, SLOTS = 10_000, 360  # bf:rates: a ring of one hour in 10-s slots of Redis time
COUNTS = {"ok": 3, "failed": 1, "empty": 0, "missing": 2}


async def ack(ctx: Ctx, claim: Claim) -> int | None:
    return await ctx.store.ack_upload(claim, retention_s=RETENTION_S, upload_ms=12.5)


async def frozen_claim(ctx: Ctx) -> Claim:
    """Past its deadline with one outcome, claimed, payload frozen: every key but the late hash."""
    await open_batch(ctx, "s1", "s2", timeout_s=0)
    await record(ctx, "s1")
    claim = await ctx.store.claim(BATCH, 60_000)
    assert claim is not None
    assert await ctx.store.freeze_payload(claim, b"body") is not None
    return claim


async def then_uploaded(ctx: Ctx, seen: Seen) -> None:
    uploaded_ms = seen.int(1)
    assert seen.reply == [b"uploaded", uploaded_ms]
    assert seen.t0 <= uploaded_ms <= seen.t1
    assert seen.result == uploaded_ms
    meta = await ctx.meta(BATCH)
    assert (meta["state"], meta["uploaded_ms"], meta["upload_ms"]) == ("uploaded", str(uploaded_ms), "12.5")
    assert await ctx.zscore(ctx.leases, BATCH) is None
    for key in ctx.keys.batch_keys(BATCH):
        ttl = int(await ctx.redis.ttl(key))
        assert ttl == -2 or RETENTION_S - 5 <= ttl <= RETENTION_S, (key, ttl)  # -2: a key the batch never had
    assert [await ctx.exists(k) for k in ctx.keys.batch_keys(BATCH)] == [True, True, True, False, True]  # no late hash
    assert await ctx.redis.lrange(ctx.recent, 0, -1) == [BATCH.encode()]
    assert "uploaded_by" not in meta and not await ctx.exists(ctx.rates)  # neither given
    stats = await ctx.stats()
    assert (stats["batches_uploaded"], stats["batches_deadline"]) == (1, 1)


async def acked_before(ctx: Ctx) -> tuple[Claim, int]:
    claim = await frozen_claim(ctx)
    first = await ack(ctx, claim)
    assert first is not None
    return claim, first


async def ack_again(ctx: Ctx, given: tuple[Claim, int]) -> int | None:
    return await ack(ctx, given[0])


async def then_uploaded_again(ctx: Ctx, seen: Seen) -> None:
    _, first_ms = seen.given
    assert seen.reply == [b"uploaded", first_ms]  # the first ack's time
    assert seen.result == first_ms
    assert (await ctx.meta(BATCH))["uploaded_ms"] == str(first_ms)
    assert await ctx.redis.lrange(ctx.recent, 0, -1) == [BATCH.encode()]  # changes nothing
    assert (await ctx.stats())["batches_uploaded"] == 1


async def full_recent_list(ctx: Ctx) -> Claim:
    claim = await frozen_claim(ctx)
    await ctx.redis.rpush(ctx.recent, *[f"old:0:{i}" for i in range(RECENT_KEPT)])
    return claim


async def then_recent_capped(ctx: Ctx, seen: Seen) -> None:
    assert seen.kind() == "uploaded"
    assert await ctx.redis.llen(ctx.recent) == RECENT_KEPT
    assert await ctx.redis.lindex(ctx.recent, 0) == BATCH.encode()
    assert await ctx.redis.lindex(ctx.recent, -1) == f"old:0:{RECENT_KEPT - 2}".encode()


async def then_fenced(ctx: Ctx, seen: Seen) -> None:
    assert seen.kind() == "fenced" and counter(seen.reply[1]) == 2  # the current owner's token
    assert seen.result is None
    meta = await ctx.meta(BATCH)
    assert meta["state"] == "finalized" and "uploaded_ms" not in meta
    assert await ctx.zscore(ctx.leases, BATCH) is not None  # the new owner's lease stays
    assert await ctx.pttl(ctx.keys.batch(BATCH)) == -1
    assert not await ctx.exists(ctx.recent)
    assert "batches_uploaded" not in await ctx.stats()


async def batch_expired(ctx: Ctx) -> Claim:
    claim = await claimed(ctx)
    await ctx.redis.delete(*ctx.keys.batch_keys(BATCH))
    return claim


async def then_fenced_no_owner(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"fenced", b""]
    assert seen.result is None
    assert not await ctx.exists(ctx.keys.batch(BATCH))  # not re-created
    assert not await ctx.exists(ctx.recent)


async def ack_counted(ctx: Ctx, claim: Claim) -> int | None:
    return await ctx.store.ack_upload(claim, retention_s=RETENTION_S, upload_ms=12.5, uploaded_by="agg-1", counts=COUNTS)


def position(now_ms: int) -> tuple[int, str]:
    slot = now_ms // SLOT_MS
    return slot, str(slot % SLOTS)


async def ring(ctx: Ctx, pos: str) -> dict[str, int]:
    raw = await ctx.hash(ctx.rates)
    return {name: int(raw[f"{pos}:{name}"]) for name in ("t", "batches", "ok", "failed", "empty", "missing")}


async def then_counted(ctx: Ctx, seen: Seen) -> None:
    assert seen.kind() == "uploaded" and seen.result == seen.int(1)
    assert (await ctx.meta(BATCH))["uploaded_by"] == "agg-1"
    slot, pos = position(seen.int(1))
    assert await ring(ctx, pos) == {"t": slot, "batches": 1, **COUNTS}
    assert len(await ctx.hash(ctx.rates)) == 6  # one position written, nothing else


async def ring_an_hour_old(ctx: Ctx) -> Claim:
    """Every position last written an hour or more ago, with counts in it."""
    claim = await frozen_claim(ctx)
    old_slot = (await ctx.now_ms()) // SLOT_MS - SLOTS
    ring_fields = {}
    for p in range(SLOTS):
        t = old_slot - (old_slot - p) % SLOTS  # the newest slot of position p that is at least an hour old
        ring_fields |= {f"{p}:t": t, f"{p}:batches": 9, f"{p}:ok": 9, f"{p}:failed": 9, f"{p}:empty": 9, f"{p}:missing": 9}
    await ctx.redis.hset(ctx.rates, mapping=ring_fields)
    return claim


async def then_old_slot_reset(ctx: Ctx, seen: Seen) -> None:
    slot, pos = position(seen.int(1))
    assert await ring(ctx, pos) == {"t": slot, "batches": 1, **COUNTS}  # zeroed, then counted
    other = str((int(pos) + 1) % SLOTS)
    assert (await ring(ctx, other))["batches"] == 9  # other positions untouched


async def ring_current(ctx: Ctx) -> Claim:
    """Every position already holds the slot it will have for the coming hour, with counts in it."""
    claim = await frozen_claim(ctx)
    first = (await ctx.now_ms()) // SLOT_MS
    ring_fields = {}
    for s in range(first, first + SLOTS):
        p = s % SLOTS
        ring_fields |= {f"{p}:t": s, f"{p}:batches": 5, f"{p}:ok": 5, f"{p}:failed": 5, f"{p}:empty": 5, f"{p}:missing": 5}
    await ctx.redis.hset(ctx.rates, mapping=ring_fields)
    return claim


async def then_added_to_slot(ctx: Ctx, seen: Seen) -> None:
    slot, pos = position(seen.int(1))
    assert await ring(ctx, pos) == {"t": slot, "batches": 6, **{k: 5 + v for k, v in COUNTS.items()}}


async def counted_before(ctx: Ctx) -> tuple[Claim, int]:
    claim = await frozen_claim(ctx)
    first = await ack_counted(ctx, claim)
    assert first is not None
    return claim, first


async def ack_counted_again(ctx: Ctx, given: tuple[Claim, int]) -> int | None:
    return await ack_counted(ctx, given[0])


async def then_counted_once(ctx: Ctx, seen: Seen) -> None:
    _, first_ms = seen.given
    assert seen.reply == [b"uploaded", first_ms]
    slot, pos = position(first_ms)
    assert await ring(ctx, pos) == {"t": slot, "batches": 1, **COUNTS}  # a repeated ack adds nothing


CASES = [
    Case("uploaded", "marked-uploaded-keys-expire-recent-stats", frozen_claim, ack, then_uploaded),
    Case("uploaded", "acked-again-returns-first-ack-time", acked_before, ack_again, then_uploaded_again),
    Case("uploaded", "recent-list-keeps-newest-100", full_recent_list, ack, then_recent_capped),
    Case("uploaded", "uploaded-by-and-counts-in-rate-ring", frozen_claim, ack_counted, then_counted),
    Case("uploaded", "rate-slot-an-hour-old-reset", ring_an_hour_old, ack_counted, then_old_slot_reset),
    Case("uploaded", "rate-slot-current-added-to", ring_current, ack_counted, then_added_to_slot),
    Case("uploaded", "acked-again-counted-once", counted_before, ack_counted_again, then_counted_once),
    Case("fenced", "lease-taken-over", taken_over, ack, then_fenced),
    Case("fenced", "batch-expired", batch_expired, ack, then_fenced_no_owner),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_ack_upload(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
