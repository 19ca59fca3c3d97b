"""Hypothesis properties of the real parsing and planning path (pure functions, no servers)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchfleet.dispatcher.batching import Unit, group_sizes, plan_dispatch
from batchfleet.dispatcher.parsing import BadMessage, parse_stations
from batchfleet.models import BatchSpec, QuarantineEntry
from batchfleet.settings import TopicConfig
from tests.unit.messages import Msg

MAX_BYTES = 1_048_576
FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- (1) arbitrary bytes: a list of pairs or BadMessage, nothing else --------------------------------

JSONISH = st.text(alphabet='{}[]":,.0123456789eE+-\\ntrufalsNIinfy u\ud7ffé', max_size=80)
VALID_PREFIX = b'{"stationData":[{"stationId":"s1","x":'


def _mutations() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        JSONISH.map(str.encode),
        st.tuples(JSONISH, st.sampled_from(["}]}", "]}", "}", ""])).map(lambda t: VALID_PREFIX + t[0].encode() + t[1].encode()),
        st.integers(min_value=0, max_value=300).map(lambda n: b"[" * n + b"]" * n),
    )


@FAST
@given(value=st.one_of(st.none(), _mutations()), max_bytes=st.sampled_from([64, 150, MAX_BYTES]))
def test_parse_returns_pairs_or_raises_bad_message(value: bytes | None, max_bytes: int) -> None:
    try:
        pairs = parse_stations(value, TopicConfig(), max_bytes)
    except BadMessage as bad:
        assert isinstance(bad.reason, str) and bad.reason
        return
    assert isinstance(pairs, list) and pairs
    for pair in pairs:
        assert isinstance(pair, tuple) and len(pair) == 2
        sid, record = pair
        assert isinstance(sid, str) and sid.strip()
        assert isinstance(record, dict)
        assert record["stationId"] == sid


# -- (2) valid documents round-trip exactly ----------------------------------------------------------

STATION_IDS = st.text(alphabet="abcXYZ09-_.:é站", min_size=1, max_size=8)
FIELD_NAMES = st.text(alphabet="kvxyz_-é字 ", max_size=6)  # cannot spell a configured station field name
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(FIELD_NAMES, children, max_size=4),
    ),
    max_leaves=6,
)
FIELDS = st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=3)
CONFIGS = st.sampled_from(
    [TopicConfig(), TopicConfig(station_list_field="items", station_id_field="id"), TopicConfig(max_stations=50)]
)


@st.composite
def valid_documents(draw: st.DrawFn) -> tuple[TopicConfig, bytes, list[tuple[str, dict[str, Any]]]]:
    cfg = draw(CONFIGS)
    sids = draw(st.lists(STATION_IDS, min_size=1, max_size=8))
    entries = []
    for sid in sids:
        fields = draw(FIELDS)
        entries.append({**fields, cfg.station_id_field: sid})
    extra = draw(FIELDS)
    document = {**extra, cfg.station_list_field: entries}
    ensure_ascii = draw(st.booleans())
    indent = draw(st.sampled_from([None, 1]))
    text = json.dumps(document, ensure_ascii=ensure_ascii, indent=indent)
    return cfg, text.encode("utf-8"), [(e[cfg.station_id_field], e) for e in entries]


@FAST
@given(case=valid_documents())
def test_valid_documents_parse_to_exact_stations_and_records(
    case: tuple[TopicConfig, bytes, list[tuple[str, dict[str, Any]]]],
) -> None:
    cfg, value, expected = case
    pairs = parse_stations(value, cfg, MAX_BYTES)
    assert [sid for sid, _ in pairs] == [sid for sid, _ in expected]
    assert pairs == expected
    # no value changed type on the way (e.g. an int turned into a float)
    assert json.dumps(pairs, sort_keys=True) == json.dumps(expected, sort_keys=True)


# -- (3) mixtures of valid and invalid messages across partitions -----------------------------------


BAD_VALUES = [
    None,
    b"",
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'{"stationData": []}',
    b'{"stationData": {}}',
    b'{"other": []}',
    b'{"stationData": [1]}',
    b'{"stationData": [{"stationId": ""}]}',
    b'{"stationData": [{"stationId": 5}]}',
    b'{"stationData": [{"stationId": "a", "x": NaN}]}',
    b'{"stationData": [{"stationId": "a", "n": 99999999999999999999999}]}',
    b'{"stationData": [{"stationId": "a", "d": ' + b"[" * 100 + b"]" * 100 + b"}]}",
    b'{"stationData": [{"stationId": "' + b"x" * 300 + b'"}]}',
]
TOPICS = ["A-TOPIC", "B-TOPIC"]


@st.composite
def polls(draw: st.DrawFn) -> list[Msg]:
    msgs: list[Msg] = []
    counter = 0
    for topic in draw(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=2, unique=True)):
        for partition in draw(st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)):
            offset = draw(st.integers(0, 1000))
            for _ in range(draw(st.integers(1, 6))):
                offset += draw(st.integers(1, 3))  # gaps as in compacted/transactional topics
                if draw(st.booleans()):
                    value = draw(st.sampled_from(BAD_VALUES))
                else:
                    counter += 1
                    sids = draw(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=4))
                    entries = [{"stationId": s, "src": f"{topic}:{partition}:{offset}", "i": i} for i, s in enumerate(sids)]
                    value = json.dumps({"stationData": entries}).encode()
                msgs.append(Msg(topic, partition, offset, value))
    return draw(st.permutations(msgs))


def _moving_spans(unit: Unit) -> list[tuple[str, int, int, int]]:
    """(topic, partition, first, next) that storing this unit moves the offsets over."""
    if isinstance(unit, QuarantineEntry):
        return [(unit.topic, unit.partition, unit.offset, unit.offset + 1)] if unit.advance_offset else []
    return [(r.topic, r.partition, r.first_offset, r.next_offset) for r in unit.ranges]


def _check_plan(msgs: list[Msg], units: list[Unit], cfg: TopicConfig) -> None:  # noqa: C901
    parsed: dict[tuple[str, int, int], list[tuple[str, dict[str, Any]]] | None] = {}
    for m in msgs:
        try:
            parsed[(m.topic, m.partition, m.offset)] = parse_stations(m.value, cfg, MAX_BYTES)
        except BadMessage:
            parsed[(m.topic, m.partition, m.offset)] = None

    # every message covered exactly once by an offset-moving unit; spans monotonic per partition
    covered: dict[tuple[str, int, int], int] = {}
    last_next: dict[tuple[str, int], int] = {}
    for unit in units:
        for topic, partition, first, nxt in _moving_spans(unit):
            assert first < nxt
            assert first >= last_next.get((topic, partition), -1), (unit, last_next)
            last_next[(topic, partition)] = nxt
            for key in parsed:
                if key[:2] == (topic, partition) and first <= key[2] < nxt:
                    covered[key] = covered.get(key, 0) + 1
    assert covered == dict.fromkeys(parsed, 1)

    # quarantines: exactly the bad messages, once each; the non-moving ones are covered by the next batch
    quarantined = [(q.topic, q.partition, q.offset) for q in units if isinstance(q, QuarantineEntry)]
    assert sorted(quarantined) == sorted(k for k, v in parsed.items() if v is None)
    for i, unit in enumerate(units):
        if isinstance(unit, QuarantineEntry) and not unit.advance_offset:
            following = next(u for u in units[i + 1 :] if isinstance(u, BatchSpec))
            assert any(
                (r.topic, r.partition) == (unit.topic, unit.partition) and r.first_offset <= unit.offset < r.next_offset
                for r in following.ranges
            )

    # batches: one topic each, id = first valid covered message, records merged in Kafka order
    for spec in (u for u in units if isinstance(u, BatchSpec)):
        assert {r.topic for r in spec.ranges} == {spec.topic}
        assert 1 <= len(spec.stations) <= cfg.max_stations
        inside = sorted(
            key
            for key, pairs in parsed.items()
            if pairs is not None
            and any((r.topic, r.partition) == key[:2] and r.first_offset <= key[2] < r.next_offset for r in spec.ranges)
        )
        assert inside and spec.messages == len(inside)
        assert spec.batch_id == "{}:{}:{}".format(*inside[0])
        merged: dict[str, list[dict[str, Any]]] = {}
        for key in inside:
            for sid, record in parsed[key] or []:
                merged.setdefault(sid, []).append(record)
        assert list(spec.stations) == list(merged)
        assert spec.stations == merged


@FAST
@given(msgs=polls(), batching=st.sampled_from(["poll", "message"]), max_stations=st.sampled_from([1, 2, 3, 20_000]))
def test_plan_covers_every_message_once_in_monotonic_order(msgs: list[Msg], batching: str, max_stations: int) -> None:
    cfg = TopicConfig(batching=batching, max_stations=max_stations)  # type: ignore[arg-type]
    units = plan_dispatch(msgs, lambda topic: cfg, MAX_BYTES)
    _check_plan(msgs, units, cfg)
    specs = [u for u in units if isinstance(u, BatchSpec)]
    assert [s.topic for s in specs] == sorted(s.topic for s in specs)  # topics never interleave
    if batching == "message":
        valid = [m for m in msgs if _is_valid(m, cfg)]
        assert len(specs) == len(valid)
        assert all(s.messages == 1 for s in specs)


@FAST
@given(msgs=polls())
def test_poll_mode_with_large_limit_gives_each_station_one_batch_per_topic(msgs: list[Msg]) -> None:
    cfg = TopicConfig(batching="poll", max_stations=20_000)
    units = plan_dispatch(msgs, lambda topic: cfg, MAX_BYTES)
    _check_plan(msgs, units, cfg)
    specs = [u for u in units if isinstance(u, BatchSpec)]
    topics = [s.topic for s in specs]
    assert len(topics) == len(set(topics))  # one batch per topic
    assert set(topics) == {m.topic for m in msgs if _is_valid(m, cfg)}
    for topic in set(topics):
        seen: set[str] = set()
        for spec in (s for s in specs if s.topic == topic):
            assert seen.isdisjoint(spec.stations)
            seen.update(spec.stations)
    for q in (u for u in units if isinstance(u, QuarantineEntry)):
        assert q.advance_offset == (q.topic not in topics)


def _is_valid(m: Msg, cfg: TopicConfig) -> bool:
    try:
        parse_stations(m.value, cfg, MAX_BYTES)
    except BadMessage:
        return False
    return True


# -- (4) group sizes: every station in exactly one job, few jobs, spread over the live workers --------


@FAST
@given(
    stations=st.integers(min_value=1, max_value=50_000),
    per_job=st.integers(min_value=1, max_value=10_000),
    workers=st.integers(min_value=0, max_value=500),
)
def test_group_sizes_cover_the_batch_in_balanced_jobs(stations: int, per_job: int, workers: int) -> None:
    sizes = group_sizes(stations, per_job, workers)
    assert sum(sizes) == stations and min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert max(sizes) <= per_job  # never more than the setting
    assert len(sizes) == min(stations, max(math.ceil(stations / per_job), workers, 1))  # as few as that allows
