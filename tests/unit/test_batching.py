"""``dispatcher.batching.plan_dispatch`` on small fake Kafka messages (no broker, no Redis)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from batchfleet.dispatcher.batching import Unit, group_sizes, plan_dispatch
from batchfleet.models import BatchSpec, PartitionRange, QuarantineEntry
from batchfleet.settings import TopicConfig
from tests.unit.messages import Msg

MAX_BYTES = 1_048_576
T = "SCHEDULE-STATION-REALTIME-DATA"


def rec(sid: str, tag: str) -> dict[str, Any]:
    return {"stationId": sid, "tag": tag}


def doc(*stations: str, tag: str = "") -> bytes:
    return json.dumps({"stationData": [rec(s, tag) for s in stations]}).encode()


def valid(partition: int, offset: int, *stations: str, topic: str = T) -> Msg:
    return Msg(topic, partition, offset, doc(*stations, tag=f"{partition}:{offset}"))


def bad(partition: int, offset: int, value: bytes | None = b"not json", topic: str = T) -> Msg:
    return Msg(topic, partition, offset, value)


def configs(batching: str = "poll", **kw: Any) -> Callable[[str], TopicConfig]:
    cfg = TopicConfig(batching=batching, **kw)  # type: ignore[arg-type]

    def topic_config(topic: str) -> TopicConfig:
        return cfg

    return topic_config


def plan(msgs: Sequence[Msg], batching: str = "poll", max_bytes: int = MAX_BYTES, **kw: Any) -> list[Unit]:
    return plan_dispatch(list(msgs), configs(batching, **kw), max_bytes)


def batches(units: list[Unit]) -> list[BatchSpec]:
    return [u for u in units if isinstance(u, BatchSpec)]


def quarantines(units: list[Unit]) -> list[QuarantineEntry]:
    return [u for u in units if isinstance(u, QuarantineEntry)]


def coverage(units: list[Unit]) -> dict[tuple[str, int, int], int]:
    """(topic, partition, offset) -> how many offset-moving units cover it."""
    counts: dict[tuple[str, int, int], int] = {}
    for unit in units:
        if isinstance(unit, QuarantineEntry):
            if unit.advance_offset:
                key = (unit.topic, unit.partition, unit.offset)
                counts[key] = counts.get(key, 0) + 1
        else:
            for r in unit.ranges:
                for off in range(r.first_offset, r.next_offset):
                    key = (r.topic, r.partition, off)
                    counts[key] = counts.get(key, 0) + 1
    return counts


def assert_each_message_covered_once(msgs: Sequence[Msg], units: list[Unit]) -> None:
    counts = coverage(units)
    for m in msgs:
        assert counts.get((m.topic, m.partition, m.offset)) == 1, (m, units)
    for i, unit in enumerate(units):
        if isinstance(unit, QuarantineEntry) and not unit.advance_offset:
            following = next(u for u in units[i + 1 :] if isinstance(u, BatchSpec))
            assert following.topic == unit.topic
            assert any(r.partition == unit.partition and r.first_offset <= unit.offset < r.next_offset for r in following.ranges)


# -- poll mode -----------------------------------------------------------------------------------


def test_poll_merges_one_topic_across_partitions_into_one_batch() -> None:
    msgs = [valid(1, 3, "B"), valid(0, 6, "A", "C"), valid(0, 5, "A")]
    units = plan(msgs)
    assert len(units) == 1
    [spec] = units
    assert isinstance(spec, BatchSpec)
    assert spec.batch_id == f"{T}:0:5"
    assert spec.topic == T
    assert list(spec.stations) == ["A", "C", "B"]  # Kafka order: partition, then offset
    assert spec.stations["A"] == [rec("A", "0:5"), rec("A", "0:6")]
    assert spec.stations["C"] == [rec("C", "0:6")]
    assert spec.stations["B"] == [rec("B", "1:3")]
    assert spec.ranges == [PartitionRange(T, 0, 5, 7), PartitionRange(T, 1, 3, 4)]
    assert spec.messages == 3


def test_batch_carries_topic_settings() -> None:
    [spec] = plan([valid(0, 0, "A")], timeout_s=2.5, retention_s=42, late="record")
    assert isinstance(spec, BatchSpec)
    assert spec.timeout_s == 2.5
    assert spec.retention_s == 42
    assert spec.late_policy == "record"


def test_batch_id_is_first_valid_message_by_partition_then_offset() -> None:
    msgs = [valid(2, 1, "A"), valid(1, 9, "B"), valid(1, 7, "C"), valid(3, 0, "D")]
    for _ in range(5):
        random.shuffle(msgs)
        [spec] = plan(msgs)
        assert isinstance(spec, BatchSpec)
        assert spec.batch_id == f"{T}:1:7"
        assert list(spec.stations) == ["C", "B", "A", "D"]


def test_batch_id_skips_leading_bad_messages() -> None:
    units = plan([bad(0, 10), bad(0, 11), valid(0, 12, "A"), valid(1, 0, "B")])
    spec = batches(units)[0]
    assert spec.batch_id == f"{T}:0:12"


def test_station_in_several_messages_gets_one_entry_in_kafka_order() -> None:
    msgs = [valid(1, 0, "S", "X"), valid(0, 8, "S"), valid(0, 2, "S"), valid(1, 1, "S")]
    [spec] = plan(msgs)
    assert isinstance(spec, BatchSpec)
    assert list(spec.stations) == ["S", "X"]
    assert [r["tag"] for r in spec.stations["S"]] == ["0:2", "0:8", "1:0", "1:1"]


def test_duplicate_station_within_one_message_merges_into_one_entry() -> None:
    [spec] = plan([valid(0, 0, "S", "T", "S")])
    assert isinstance(spec, BatchSpec)
    assert list(spec.stations) == ["S", "T"]
    assert len(spec.stations["S"]) == 2


def test_topics_are_never_mixed() -> None:
    other = "OTHER-TOPIC"
    msgs = [valid(0, 0, "A"), valid(0, 0, "A", topic=other), valid(0, 1, "B", topic=other), valid(1, 4, "C")]
    units = plan(msgs)
    specs = batches(units)
    assert [s.topic for s in specs] == sorted([T, other])
    for spec in specs:
        assert all(r.topic == spec.topic for r in spec.ranges)
        assert spec.batch_id.startswith(spec.topic + ":")
    by_topic = {s.topic: s for s in specs}
    assert list(by_topic[other].stations) == ["A", "B"]
    assert list(by_topic[T].stations) == ["A", "C"]
    assert [r["tag"] for r in by_topic[other].stations["A"]] == ["0:0"]
    assert by_topic[T].ranges == [PartitionRange(T, 0, 0, 1), PartitionRange(T, 1, 4, 5)]
    assert_each_message_covered_once(msgs, units)


def test_topics_use_their_own_config() -> None:
    other = "OTHER-TOPIC"

    def topic_config(topic: str) -> TopicConfig:
        return TopicConfig(batching="message") if topic == other else TopicConfig(batching="poll")

    msgs = [valid(0, 0, "A"), valid(0, 1, "B"), valid(0, 0, "A", topic=other), valid(0, 1, "B", topic=other)]
    units = plan_dispatch(msgs, topic_config, MAX_BYTES)
    assert [(u.topic, u.batch_id) for u in batches(units)] == [
        (other, f"{other}:0:0"),
        (other, f"{other}:0:1"),
        (T, f"{T}:0:0"),
    ]


# -- message mode --------------------------------------------------------------------------------


def test_message_mode_makes_one_batch_per_message() -> None:
    msgs = [valid(1, 0, "A"), valid(0, 3, "A", "B"), valid(0, 4, "B")]
    units = plan(msgs, batching="message")
    specs = batches(units)
    assert len(units) == len(specs) == 3
    assert [s.batch_id for s in specs] == [f"{T}:0:3", f"{T}:0:4", f"{T}:1:0"]
    assert [list(s.stations) for s in specs] == [["A", "B"], ["B"], ["A"]]
    assert [s.ranges for s in specs] == [
        [PartitionRange(T, 0, 3, 4)],
        [PartitionRange(T, 0, 4, 5)],
        [PartitionRange(T, 1, 0, 1)],
    ]
    assert all(s.messages == 1 for s in specs)
    assert_each_message_covered_once(msgs, units)


def test_message_mode_bad_message_advances_its_own_offset() -> None:
    msgs = [valid(0, 0, "A"), bad(0, 1), valid(0, 2, "B")]
    units = plan(msgs, batching="message")
    assert [type(u).__name__ for u in units] == ["BatchSpec", "QuarantineEntry", "BatchSpec"]
    q = units[1]
    assert isinstance(q, QuarantineEntry)
    assert q.advance_offset is True
    assert q.offset == 1
    assert "invalid JSON" in q.reason
    assert_each_message_covered_once(msgs, units)


# -- splitting -----------------------------------------------------------------------------------


def test_split_when_exceeding_max_stations() -> None:
    msgs = [valid(0, 0, "A", "B"), valid(0, 1, "C"), valid(0, 2, "A")]
    units = plan(msgs, max_stations=2)
    specs = batches(units)
    assert len(units) == len(specs) == 2
    assert [s.batch_id for s in specs] == [f"{T}:0:0", f"{T}:0:1"]
    assert [list(s.stations) for s in specs] == [["A", "B"], ["C", "A"]]
    assert [s.ranges for s in specs] == [[PartitionRange(T, 0, 0, 1)], [PartitionRange(T, 0, 1, 3)]]
    assert [s.messages for s in specs] == [1, 2]
    assert_each_message_covered_once(msgs, units)


def test_split_keeps_every_message_whole_and_covered() -> None:
    msgs = [valid(0, 0, "A", "B"), valid(0, 1, "C"), valid(0, 2, "A"), valid(0, 3, "D"), valid(1, 0, "A", "E")]
    units = plan(msgs, max_stations=2)
    specs = batches(units)
    assert [list(s.stations) for s in specs] == [["A", "B"], ["C", "A"], ["D"], ["A", "E"]]
    assert all(len(s.stations) <= 2 for s in specs)
    assert_each_message_covered_once(msgs, units)


def test_existing_station_does_not_count_towards_split() -> None:
    msgs = [valid(0, 0, "A", "B"), valid(0, 1, "B", "A"), valid(1, 0, "A")]
    [spec] = plan(msgs, max_stations=2)
    assert isinstance(spec, BatchSpec)
    assert list(spec.stations) == ["A", "B"]
    assert spec.messages == 3


def test_message_with_more_stations_than_max_is_quarantined_not_split() -> None:
    msgs = [valid(0, 0, "A"), valid(0, 1, "B", "C", "D")]
    units = plan(msgs, max_stations=2)
    [q] = quarantines(units)
    assert q.offset == 1
    assert "too many stations: 3 > max 2" in q.reason
    assert_each_message_covered_once(msgs, units)


# -- bad messages --------------------------------------------------------------------------------


def test_bad_message_inside_poll_batch_is_quarantined_first_without_moving_offsets() -> None:
    msgs = [valid(0, 0, "A"), bad(0, 1, b"{broken"), valid(0, 2, "B")]
    units = plan(msgs)
    assert [type(u).__name__ for u in units] == ["QuarantineEntry", "BatchSpec"]
    q, spec = units
    assert isinstance(q, QuarantineEntry) and isinstance(spec, BatchSpec)
    assert (q.topic, q.partition, q.offset) == (T, 0, 1)
    assert q.advance_offset is False
    assert "invalid JSON" in q.reason
    assert q.value == b"{broken"
    assert q.size == len(b"{broken")
    assert spec.ranges == [PartitionRange(T, 0, 0, 3)]
    assert spec.messages == 2
    assert list(spec.stations) == ["A", "B"]
    assert_each_message_covered_once(msgs, units)


def test_bad_message_after_last_valid_one_is_covered_by_the_batch() -> None:
    msgs = [valid(0, 0, "A"), bad(0, 1), bad(1, 0, None)]
    units = plan(msgs)
    assert [type(u).__name__ for u in units] == ["QuarantineEntry", "QuarantineEntry", "BatchSpec"]
    assert all(not q.advance_offset for q in quarantines(units))
    spec = batches(units)[0]
    assert spec.ranges == [PartitionRange(T, 0, 0, 2), PartitionRange(T, 1, 0, 1)]
    assert_each_message_covered_once(msgs, units)


def test_bad_messages_in_a_split_go_with_the_batch_that_covers_them() -> None:
    msgs = [valid(0, 0, "A"), bad(0, 1), valid(0, 2, "B"), bad(0, 3), valid(0, 4, "C")]
    units = plan(msgs, max_stations=1)
    # each batch's quarantines come first; the bad message after a batch's last valid one is covered by it
    assert [type(u).__name__ for u in units] == [
        "QuarantineEntry",
        "BatchSpec",
        "QuarantineEntry",
        "BatchSpec",
        "BatchSpec",
    ]
    assert all(not q.advance_offset for q in quarantines(units))
    assert [q.offset for q in quarantines(units)] == [1, 3]
    assert [s.ranges for s in batches(units)] == [
        [PartitionRange(T, 0, 0, 2)],
        [PartitionRange(T, 0, 2, 4)],
        [PartitionRange(T, 0, 4, 5)],
    ]
    assert_each_message_covered_once(msgs, units)


def test_poll_of_only_bad_messages_advances_offsets_itself() -> None:
    msgs = [bad(1, 5), bad(0, 2, None), bad(0, 3, b"[]")]
    units = plan(msgs)
    assert units == quarantines(units)
    assert [(q.partition, q.offset, q.advance_offset) for q in quarantines(units)] == [
        (0, 2, True),
        (0, 3, True),
        (1, 5, True),
    ]
    reasons = [q.reason for q in quarantines(units)]
    assert "tombstone" in reasons[0]
    assert "not an object" in reasons[1]
    assert "invalid JSON" in reasons[2]
    assert_each_message_covered_once(msgs, units)


def test_bad_only_topic_next_to_good_topic() -> None:
    other = "BAD-TOPIC"
    msgs = [bad(0, 0, topic=other), valid(0, 0, "A")]
    units = plan(msgs)
    q = quarantines(units)[0]
    assert q.topic == other
    assert q.advance_offset is True
    assert batches(units)[0].topic == T
    assert_each_message_covered_once(msgs, units)


def test_quarantine_keeps_size_and_a_bounded_prefix_of_the_value() -> None:
    value = b"x" * 200_000
    [q] = plan([bad(0, 0, value)], max_bytes=100_000)
    assert isinstance(q, QuarantineEntry)
    assert q.size == 200_000
    assert q.value == value[: 64 * 1024]
    assert "oversized message: 200000 bytes" in q.reason


def test_tombstone_quarantine_has_empty_value() -> None:
    [q] = plan([bad(0, 7, None)])
    assert isinstance(q, QuarantineEntry)
    assert (q.value, q.size) == (b"", 0)


def test_empty_poll_plans_nothing() -> None:
    assert plan([]) == []


# -- coverage property over hand-made scenarios --------------------------------------------------


SCENARIOS: dict[str, list[Msg]] = {
    "all-valid": [valid(p, o, f"S{(p + o) % 3}") for p in range(3) for o in range(4)],
    "interleaved-bad": [valid(0, 0, "A"), bad(0, 1), valid(0, 2, "B"), bad(1, 0), valid(1, 1, "C"), bad(2, 9)],
    "gaps-in-offsets": [valid(0, 10, "A"), valid(0, 15, "B"), bad(0, 20), valid(1, 100, "A")],
    "bad-first": [bad(0, 0), bad(0, 1), valid(0, 2, "A"), valid(1, 0, "B")],
    "two-topics": [valid(0, 0, "A"), bad(0, 1), valid(0, 0, "A", topic="X"), bad(0, 1, topic="X")],
    "many-stations": [valid(0, o, *(f"S{o}-{i}" for i in range(3))) for o in range(6)],
}


@pytest.mark.parametrize("batching", ["poll", "message"])
@pytest.mark.parametrize("max_stations", [1, 2, 5, 20_000])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_message_offset_is_covered_by_exactly_one_unit(name: str, max_stations: int, batching: str) -> None:
    msgs = list(SCENARIOS[name])
    random.Random(name).shuffle(msgs)
    units = plan(msgs, batching=batching, max_stations=max_stations)
    assert_each_message_covered_once(msgs, units)
    quarantined = {(q.topic, q.partition, q.offset) for q in quarantines(units)}
    assert len(quarantined) == len(quarantines(units))
    for spec in batches(units):
        assert len(spec.stations) <= max_stations


def test_group_sizes_make_few_jobs_of_big_batches_and_spread_small_ones() -> None:
    assert group_sizes(10_000, 100, 2) == [100] * 100  # big: as few jobs as the setting allows
    assert group_sizes(100, 100, 2) == [50, 50]  # one job per live worker ...
    assert group_sizes(5, 100, 8) == [1] * 5  # ... but never more jobs than stations
    assert group_sizes(7, 100, 0) == [7]  # no live worker seen: one job
    assert group_sizes(10, 4, 1) == [4, 3, 3]  # balanced
    assert group_sizes(0, 100, 2) == []
