"""record_outcome.lua through BatchStore.record_outcome / record_outcomes: the outcomes of one or
more stations of a batch, each recorded at most once (first wins), with one verdict letter each;
completion and quorum make the batch due."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchfleet.models import RecordedOutcomes, RecordResult
from tests.contract.harness import (
    BATCH,
    INC,
    Case,
    Ctx,
    Seen,
    claimed,
    nothing,
    open_batch,
    outcome,
    record,
    run_case,
)

SCRIPT = "record_outcome"
WAKE_UPS_KEPT = 100


def record_stations(*items: tuple[str, str]) -> Any:
    """Several stations (station, status) of BATCH in one call."""

    async def when(ctx: Ctx, given: Any) -> RecordedOutcomes:
        return await ctx.store.record_outcomes(BATCH, [(station, outcome(status)) for station, status in items])

    when.__name__ = "record_" + "_".join(station for station, _ in items)
    return when


def record_of_incarnation(incarnation: str, *stations: str) -> Any:
    """Stations of BATCH in one call, computed by a job of ``incarnation`` (its id names it)."""

    async def when(ctx: Ctx, given: Any) -> RecordedOutcomes:
        return await ctx.store.record_outcomes(BATCH, [(station, outcome("ok")) for station in stations], incarnation)

    when.__name__ = f"record_{'_'.join(stations)}_of_{incarnation}"
    return when


def record_station(station: str, status: str = "ok", **fields: Any) -> Any:
    async def when(ctx: Ctx, given: Any) -> RecordResult:
        return await ctx.store.record_outcome(BATCH, station, outcome(status, **fields))

    when.__name__ = f"record_{station}_{status}"
    return when


async def two_open(ctx: Ctx) -> int:
    await open_batch(ctx, "s1", "s2")
    return int((await ctx.meta(BATCH))["deadline_ms"])


async def then_recorded(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"recorded", 1, 2, b"r"]
    assert seen.result == RecordResult("recorded", 1, 2)
    stored = await ctx.hash(ctx.keys.outcomes(BATCH))
    assert list(stored) == ["s1"] and orjson.loads(stored["s1"])["status"] == "failed"
    assert await ctx.stats() == {"batches_created": 1, "stations_dispatched": 2, "jobs_dispatched": 1, "stations_failed": 1}
    assert await ctx.zscore(ctx.due, BATCH) == seen.given  # still due at its deadline
    assert await ctx.redis.llen(ctx.ready) == 0


async def one_of_two_recorded(ctx: Ctx) -> None:
    await open_batch(ctx, "s1", "s2")
    await record(ctx, "s1")


async def then_complete(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"complete", 2, 2, b"r"]
    assert seen.result == RecordResult("complete", 2, 2)
    assert set(await ctx.hash(ctx.keys.outcomes(BATCH))) == {"s1", "s2"}
    assert await ctx.zscore(ctx.due, BATCH) == 0  # due now
    assert await ctx.redis.lrange(ctx.ready, 0, -1) == [BATCH.encode()]  # wake-up pushed
    assert (await ctx.stats())["stations_empty"] == 1
    assert (await ctx.meta(BATCH))["state"] == "open"  # the aggregator's claim finalizes it


async def full_wake_up_list(ctx: Ctx) -> None:
    await one_of_two_recorded(ctx)
    await ctx.redis.rpush(ctx.ready, *[f"old:0:{i}" for i in range(WAKE_UPS_KEPT)])


async def then_wake_ups_capped(ctx: Ctx, seen: Seen) -> None:
    assert seen.result == RecordResult("complete", 2, 2)
    assert await ctx.redis.llen(ctx.ready) == WAKE_UPS_KEPT
    assert await ctx.redis.lindex(ctx.ready, 0) == BATCH.encode()


def quorum_batch(grace_s: float, timeout_s: float = 60) -> Any:
    """Three stations, quorum 2, s1 recorded: the next one reaches the quorum."""

    async def given(ctx: Ctx) -> int:
        await open_batch(ctx, "s1", "s2", "s3", quorum_needed=2, quorum_grace_s=grace_s, timeout_s=timeout_s)
        await record(ctx, "s1")
        return int((await ctx.meta(BATCH))["deadline_ms"])

    given.__name__ = f"quorum_batch_grace_{grace_s}"
    return given


async def assert_quorum(ctx: Ctx, seen: Seen) -> int:
    assert seen.reply == [b"quorum", 2, 3, b"r"]
    assert seen.result == RecordResult("quorum", 2, 3)
    quorum_ms = int((await ctx.meta(BATCH))["quorum_ms"])
    assert seen.t0 <= quorum_ms <= seen.t1
    return quorum_ms


async def then_quorum_with_grace(ctx: Ctx, seen: Seen) -> None:
    quorum_ms = await assert_quorum(ctx, seen)
    assert await ctx.zscore(ctx.due, BATCH) == quorum_ms + 5_000
    # the grace period runs first; the wake-up tells a sleeping aggregator the batch is due earlier
    assert await ctx.redis.lrange(ctx.ready, 0, -1) == [BATCH.encode()]


async def then_quorum_now(ctx: Ctx, seen: Seen) -> None:
    quorum_ms = await assert_quorum(ctx, seen)
    assert await ctx.zscore(ctx.due, BATCH) == quorum_ms
    assert await ctx.redis.lrange(ctx.ready, 0, -1) == [BATCH.encode()]


async def then_due_at_deadline(ctx: Ctx, seen: Seen) -> None:
    await assert_quorum(ctx, seen)
    assert await ctx.zscore(ctx.due, BATCH) == seen.given  # grace ends after the deadline: the deadline stays


async def quorum_reached(ctx: Ctx) -> str:
    await open_batch(ctx, "s1", "s2", "s3", "s4", quorum_needed=2, quorum_grace_s=5)
    await record(ctx, "s1", "s2")
    return (await ctx.meta(BATCH))["quorum_ms"]


async def then_quorum_kept(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"recorded", 3, 4, b"r"]
    meta = await ctx.meta(BATCH)
    assert meta["quorum_ms"] == seen.given  # the quorum time (and so the due time) does not move
    assert await ctx.zscore(ctx.due, BATCH) == int(seen.given) + 5_000


async def s1_recorded(ctx: Ctx) -> bytes:
    await open_batch(ctx, "s1", "s2")
    await record(ctx, "s1")
    return bytes(await ctx.redis.hget(ctx.keys.outcomes(BATCH), "s1"))


async def then_duplicate(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"unchanged", 1, 2, b"d"]
    assert seen.result == RecordResult("duplicate", 1, 2)
    assert await ctx.redis.hget(ctx.keys.outcomes(BATCH), "s1") == seen.given  # first wins
    stats = await ctx.stats()
    assert stats["duplicate_results"] == 1 and stats["stations_ok"] == 1 and "stations_failed" not in stats


async def finalized_dropping_late(ctx: Ctx) -> None:
    await claimed(ctx, "s1", "s2")


async def then_late_dropped(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"unchanged", 0, 2, b"l"]
    assert seen.result == RecordResult("late", 0, 2)
    meta = await ctx.meta(BATCH)
    assert meta["late"] == "1" and meta["state"] == "finalized"
    assert not await ctx.exists(ctx.keys.outcomes(BATCH))
    assert not await ctx.exists(ctx.keys.late(BATCH))  # late_policy drop: counted, not kept
    assert (await ctx.stats())["late_results"] == 1


async def finalized_recording_late(ctx: Ctx) -> None:
    await claimed(ctx, "s1", "s2", late_policy="record")


async def then_late_kept(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"unchanged", 0, 2, b"l"]
    assert (await ctx.meta(BATCH))["late"] == "1"
    assert list(await ctx.hash(ctx.keys.late(BATCH))) == ["s1"]
    assert await ctx.pttl(ctx.keys.late(BATCH)) == -1  # the batch has no TTL yet: neither has its late hash


async def uploaded_late_record(ctx: Ctx) -> None:
    claim = await claimed(ctx, "s1", "s2", late_policy="record")
    assert await ctx.store.ack_upload(claim, retention_s=3600, upload_ms=1.0) is not None


async def then_late_expires(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"unchanged", 0, 2, b"l"]
    late_ttl, meta_ttl = await ctx.pttl(ctx.keys.late(BATCH)), await ctx.pttl(ctx.keys.batch(BATCH))
    assert late_ttl > 0 and abs(late_ttl - meta_ttl) <= 50  # expires when the batch does


async def then_unknown_batch(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"unchanged", 0, 0, b"u"]
    assert seen.result == RecordResult("unknown", 0, 0)
    assert await ctx.redis.keys("*") == []  # nothing written, nothing counted


async def then_unknown_station(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"unchanged", 0, 2, b"u"]
    assert not await ctx.exists(ctx.keys.outcomes(BATCH))
    assert await ctx.stats() == {"batches_created": 1, "stations_dispatched": 2, "jobs_dispatched": 1}


async def then_group_recorded(ctx: Ctx, seen: Seen) -> None:
    """A group's stations in one call: each its own verdict, the counters by status, one event."""
    assert seen.reply == [b"recorded", 3, 4, b"drru"]  # s1 had an outcome; s9 is not expected
    assert seen.result == RecordedOutcomes("recorded", 3, 4, "drru")
    stored = await ctx.hash(ctx.keys.outcomes(BATCH))
    assert sorted(stored) == ["s1", "s2", "s3"] and orjson.loads(stored["s1"])["status"] == "ok"  # s1: the first wins
    assert orjson.loads(stored["s3"])["status"] == "empty"
    stats = await ctx.stats()
    assert (stats["stations_ok"], stats["stations_failed"], stats["stations_empty"], stats["duplicate_results"]) == (1, 1, 1, 1)
    assert await ctx.redis.llen(ctx.ready) == 0


async def four_one_recorded(ctx: Ctx) -> None:
    await open_batch(ctx, "s1", "s2", "s3", "s4")
    await record(ctx, "s1")


async def then_group_completes(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"complete", 4, 4, b"rrr"]
    assert await ctx.zscore(ctx.due, BATCH) == 0
    assert await ctx.redis.lrange(ctx.ready, 0, -1) == [BATCH.encode()]  # one wake-up for the call


async def then_group_late(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"unchanged", 0, 2, b"llu"]
    assert (await ctx.meta(BATCH))["late"] == "2"
    assert sorted(await ctx.hash(ctx.keys.late(BATCH))) == ["s1", "s2"]
    assert (await ctx.stats())["late_results"] == 2


async def created_again(ctx: Ctx) -> None:
    """Redis lost the batch of incarnation INC; the dispatcher created it again as another one."""
    await open_batch(ctx, "s1", "s2", incarnation="2b0b2b0b")


async def then_stale(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"unchanged", 0, 2, b"ss"]
    assert seen.result == RecordedOutcomes("unchanged", 0, 2, "ss")
    assert not await ctx.exists(ctx.keys.outcomes(BATCH))  # the new incarnation runs its stations itself
    assert (await ctx.stats())["stale_results"] == 2
    assert await ctx.redis.llen(ctx.ready) == 0


async def then_own_incarnation_recorded(ctx: Ctx, seen: Seen) -> None:
    assert seen.reply == [b"complete", 2, 2, b"rr"]
    assert sorted(await ctx.hash(ctx.keys.outcomes(BATCH))) == ["s1", "s2"]


CASES = [
    Case("complete", "own-incarnation-recorded", two_open, record_of_incarnation(INC, "s1", "s2"), then_own_incarnation_recorded),
    Case("unchanged", "stale-earlier-incarnation-not-recorded", created_again, record_of_incarnation(INC, "s1", "s2"), then_stale),
    Case("recorded", "first-outcome-batch-still-open", two_open, record_station("s1", "failed"), then_recorded),
    Case("complete", "last-station-due-now-wake-up", one_of_two_recorded, record_station("s2", "empty"), then_complete),
    Case("complete", "wake-up-list-keeps-newest-100", full_wake_up_list, record_station("s2"), then_wake_ups_capped),
    Case("quorum", "due-after-grace", quorum_batch(5), record_station("s2"), then_quorum_with_grace),
    Case("quorum", "no-grace-due-now-wake-up", quorum_batch(0), record_station("s2"), then_quorum_now),
    Case("quorum", "grace-never-past-deadline", quorum_batch(60, timeout_s=1), record_station("s2"), then_due_at_deadline),
    Case("recorded", "after-quorum-due-unchanged", quorum_reached, record_station("s3"), then_quorum_kept),
    Case(
        "recorded",
        "group-one-verdict-each",
        four_one_recorded,
        record_stations(("s1", "failed"), ("s2", "failed"), ("s3", "empty"), ("s9", "ok")),
        then_group_recorded,
    ),
    Case(
        "complete",
        "group-holding-the-last-stations",
        four_one_recorded,
        record_stations(("s2", "ok"), ("s3", "ok"), ("s4", "ok")),
        then_group_completes,
    ),
    Case(
        "unchanged",
        "group-after-finalization-late-and-unknown",
        finalized_recording_late,
        record_stations(("s1", "ok"), ("s2", "ok"), ("s9", "ok")),
        then_group_late,
    ),
    Case("unchanged", "duplicate-first-outcome-wins", s1_recorded, record_station("s1", "failed"), then_duplicate),
    Case("unchanged", "late-finalized-late-policy-drop", finalized_dropping_late, record_station("s1"), then_late_dropped),
    Case("unchanged", "late-finalized-late-policy-record", finalized_recording_late, record_station("s1"), then_late_kept),
    Case("unchanged", "late-uploaded-late-hash-expires-with-batch", uploaded_late_record, record_station("s1"), then_late_expires),
    Case("unchanged", "unknown-no-such-batch", nothing, record_station("s1"), then_unknown_batch),
    Case("unchanged", "unknown-station-not-expected", two_open, record_station("s9"), then_unknown_station),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_record_outcome(ctx: Ctx, case: Case) -> None:
    await run_case(ctx, SCRIPT, case)
