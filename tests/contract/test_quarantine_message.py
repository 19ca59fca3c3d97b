"""quarantine_message.lua through BatchStore.quarantine: keep a message that cannot become a batch,
with its reason and coordinates; counted once; optionally moves the partition's offset past it."""

from __future__ import annotations

from typing import Any

import pytest

from batchfleet.errors import FencedOffsetError, StaleOffsetError
from batchfleet.models import QuarantineEntry
from tests.contract.harness import Case, Ctx, Seen, nothing, run_case

SCRIPT = "quarantine_message"
MESSAGE = "T:0:5"
RETENTION_S = 600


def entry(offset: int = 5, *, advance: bool = True, reason: str = "invalid JSON") -> QuarantineEntry:
    return QuarantineEntry(topic="T", partition=0, offset=offset, reason=reason, value=b"{oops", size=5, advance_offset=advance)


def quarantine(offset: int = 5, *, advance: bool = True, max_entries: int = 100) -> Any:
    async def when(ctx: Ctx, given: Any) -> bool:
        return await ctx.store.quarantine(entry(offset, advance=advance), retention_s=RETENTION_S, max_entries=max_entries)

    return when


async def quarantine_catching_stale(ctx: Ctx, given: Any) -> StaleOffsetError:
    with pytest.raises(StaleOffsetError) as info:
        await quarantine()(ctx, given)
    return info.value


async def assert_quarantined(ctx: Ctx, seen: Seen) -> int:
    now_ms = seen.int(1)
    assert seen.reply == [b"quarantined", now_ms]
    assert seen.t0 <= now_ms <= seen.t1
    assert seen.result is True
    assert await ctx.hash(ctx.keys.quarantined(MESSAGE)) == {
        "reason": "invalid JSON",
        "topic": "T",
        "partition": "0",
        "offset": "5",
        "size": "5",
        "value": "{oops",
        "quarantined_ms": str(now_ms),
    }
    assert RETENTION_S - 5 <= await ctx.redis.ttl(ctx.keys.quarantined(MESSAGE)) <= RETENTION_S
    assert await ctx.zscore(ctx.quarantine, MESSAGE) == now_ms
    assert await ctx.stats() == {"messages_quarantined": 1}
    return now_ms


async def then_quarantined_advancing(ctx: Ctx, seen: Seen) -> None:
    await assert_quarantined(ctx, seen)
    assert await ctx.hash(ctx.offsets) == {"T:0": "6"}  # the partition moves past the message


async def then_quarantined_offsets_untouched(ctx: Ctx, seen: Seen) -> None:
    await assert_quarantined(ctx, seen)
    assert not await ctx.exists(ctx.offsets)  # create_batch of the same dispatch stores them


async def two_quarantined(ctx: Ctx) -> None:
    for offset in (3, 4):
        assert await ctx.store.quarantine(entry(offset), retention_s=RETENTION_S, max_entries=2)


async def then_index_trimmed(ctx: Ctx, seen: Seen) -> None:
    assert seen.kind() == "quarantined"
    assert list(await ctx.zset(ctx.quarantine)) == ["T:0:4", MESSAGE]  # the oldest left the index
    assert await ctx.exists(ctx.keys.quarantined("T:0:3"))  # its entry expires on its own
    assert (await ctx.stats())["messages_quarantined"] == 3


async def quarantined_before(ctx: Ctx) -> dict[str, str]:
    assert await ctx.store.quarantine(entry(advance=False), retention_s=RETENTION_S, max_entries=100)
    return await ctx.hash(ctx.keys.quarantined(MESSAGE))


async def then_exists(ctx: Ctx, seen: Seen) -> None:
    now_ms = seen.int(1)
    assert seen.reply == [b"exists", now_ms]
    assert seen.t0 <= now_ms <= seen.t1
    assert seen.result is False
    assert await ctx.hash(ctx.keys.quarantined(MESSAGE)) == seen.given  # not overwritten
    assert await ctx.redis.zcard(ctx.quarantine) == 1
    assert await ctx.stats() == {"messages_quarantined": 1}  # nothing counted twice
    assert await ctx.hash(ctx.offsets) == {"T:0": "6"}  # advance still applies


async def offset_ingested(ctx: Ctx) -> None:
    await ctx.redis.hset(ctx.offsets, "T:0", 9)


async def then_stale(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"stale", b"9"]
    assert (seen.result.partition_field, seen.result.stored_offset) == ("T:0", 9)
    assert await ctx.redis.keys("*") == [ctx.offsets.encode()]  # nothing written
    assert await ctx.hash(ctx.offsets) == {"T:0": "9"}


async def offset_behind(ctx: Ctx) -> None:
    await ctx.redis.hset(ctx.offsets, "T:0", 3)  # Redis went back in time (a failover lost writes)


async def quarantine_expecting_5(ctx: Ctx, given: Any) -> FencedOffsetError:
    with pytest.raises(FencedOffsetError) as info:
        await ctx.store.quarantine(entry(5), retention_s=RETENTION_S, max_entries=100, expected={"T:0": 5})
    return info.value


async def then_fenced(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"fenced", b"3"]
    assert (seen.result.partition_field, seen.result.expected, seen.result.stored_offset) == ("T:0", 5, 3)
    assert sorted(await ctx.redis.keys("*")) == sorted(
        [ctx.offsets.encode(), ctx.keys.stats(ctx.shard).encode()]
    )  # nothing written
    assert await ctx.hash(ctx.offsets) == {"T:0": "3"}
    assert (await ctx.stats())["ingest_fenced"] == 1


CASES = [
    Case("quarantined", "entry-index-stats-offset-advanced", nothing, quarantine(advance=True), then_quarantined_advancing),
    Case("quarantined", "offsets-left-to-create-batch", nothing, quarantine(advance=False), then_quarantined_offsets_untouched),
    Case("quarantined", "index-trimmed-to-max-entries", two_quarantined, quarantine(max_entries=2), then_index_trimmed),
    Case("exists", "same-message-again-counted-once", quarantined_before, quarantine(advance=True), then_exists),
    Case("fenced", "redis-behind-the-dispatcher-nothing-written", offset_behind, quarantine_expecting_5, then_fenced),
    Case("stale", "offset-already-ingested-nothing-written", offset_ingested, quarantine_catching_stale, then_stale),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_quarantine_message(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
