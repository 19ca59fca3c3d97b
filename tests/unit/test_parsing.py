"""Every bad input the dispatcher must quarantine, through ``dispatcher.parsing.parse_stations``.

Each bad message must raise ``BadMessage`` whose reason names the problem; valid messages come back
as (station id, record) pairs in message order with the records unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from batchfleet.dispatcher.parsing import MAX_DEPTH, MAX_STATION_ID_LENGTH, BadMessage, parse_stations
from batchfleet.settings import TopicConfig

CFG = TopicConfig()
MAX_BYTES = 1_048_576


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")


def message(*entries: Any, **extra: Any) -> bytes:
    return encode({"stationData": list(entries), **extra})


def parse(value: bytes | None, cfg: TopicConfig = CFG, max_bytes: int = MAX_BYTES) -> list[tuple[str, dict[str, Any]]]:
    return parse_stations(value, cfg, max_bytes)


def reason_of(value: bytes | None, cfg: TopicConfig = CFG, max_bytes: int = MAX_BYTES) -> str:
    with pytest.raises(BadMessage) as info:
        parse(value, cfg, max_bytes)
    assert info.value.reason == str(info.value)
    assert info.value.reason
    return info.value.reason


def nested_record(levels: int) -> bytes:
    """A station message whose record holds ``levels`` nested lists (total depth = levels + 3)."""
    return b'{"stationData":[{"stationId":"s1","deep":' + b"[" * levels + b"]" * levels + b"}]}"


# -- invalid bytes / invalid JSON ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b'{"stationData": [',
        b'{"stationData": [{"stationId": "a"}]} trailing',
        b"{'stationData': []}",
        b'{"stationData": [{"stationId": "a",}]}',
    ],
    ids=["empty-bytes", "plain-text", "truncated", "trailing-garbage", "single-quotes", "trailing-comma"],
)
def test_invalid_json_is_rejected(value: bytes) -> None:
    assert "invalid JSON" in reason_of(value)


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe\x00", b'{"stationData":[{"stationId":"caf\xe9"}]}', b'{"stationData":[{"stationId":"\xc3"}]}'],
    ids=["garbage", "latin-1-inside-string", "truncated-sequence"],
)
def test_non_utf8_bytes_are_rejected(value: bytes) -> None:
    reason = reason_of(value)
    assert "not UTF-8" in reason
    assert "at byte" in reason


# -- pathological JSON ---------------------------------------------------------------------------


def test_ten_thousand_levels_of_nesting_are_rejected() -> None:
    assert f"nesting deeper than {MAX_DEPTH}" in reason_of(b"[" * 10_000 + b"]" * 10_000)


def test_ten_thousand_levels_inside_a_station_record_are_rejected() -> None:
    assert f"nesting deeper than {MAX_DEPTH}" in reason_of(nested_record(10_000))


def test_unbalanced_deep_nesting_is_rejected() -> None:
    assert f"nesting deeper than {MAX_DEPTH}" in reason_of(b'{"a":' * 10_000)


def test_nesting_just_over_max_depth_is_rejected() -> None:
    assert f"nesting deeper than {MAX_DEPTH}" in reason_of(nested_record(MAX_DEPTH - 3 + 1))


def test_nesting_at_max_depth_is_accepted() -> None:
    levels = MAX_DEPTH - 3
    [(sid, record)] = parse(nested_record(levels))
    assert sid == "s1"
    value = record["deep"]
    for _ in range(levels - 1):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == []


@pytest.mark.parametrize(
    "literal",
    [
        str(2**63),
        str(-(2**63) - 1),
        str(2**64),
        "1" + "0" * 30,
        "-" + "9" * 25,
        "7" * 5000,  # beyond CPython's int-from-str digit limit as well
    ],
    ids=["2^63", "-2^63-1", "2^64", "10^30", "neg-25-digits", "5000-digits"],
)
def test_integers_beyond_64_bits_are_rejected_not_rounded(literal: str) -> None:
    value = b'{"stationData":[{"stationId":"s1","n":' + literal.encode() + b"}]}"
    reason = reason_of(value)
    assert "exceeds 64 bits" in reason


def test_huge_integer_as_station_id_is_rejected() -> None:
    assert "exceeds 64 bits" in reason_of(b'{"stationData":[{"stationId":123456789012345678901234567890}]}')


@pytest.mark.parametrize("literal", [str(2**63 - 1), str(-(2**63)), "0", "-1"])
def test_integers_within_64_bits_are_kept_exactly(literal: str) -> None:
    value = b'{"stationData":[{"stationId":"s1","n":' + literal.encode() + b"}]}"
    [(_, record)] = parse(value)
    assert record["n"] == int(literal)
    assert isinstance(record["n"], int)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(literal: str) -> None:
    value = b'{"stationData":[{"stationId":"s1","x":' + literal.encode() + b"}]}"
    reason = reason_of(value)
    assert f"{literal} is not allowed" in reason


@pytest.mark.parametrize("literal", ["1e999", "-1e400", "123456789e999"])
def test_float_literal_overflowing_to_infinity_is_rejected(literal: str) -> None:
    """A finite-looking literal that Python parses as +/-inf is Infinity in disguise: it must not pass.

    Otherwise the record is silently changed (orjson stores inf as ``null``), which the module
    promises never to do for NaN/Infinity.
    """
    value = b'{"stationData":[{"stationId":"s1","x":' + literal.encode() + b"}]}"
    with pytest.raises(BadMessage) as info:
        parse(value)
    assert any(word in info.value.reason.lower() for word in ("inf", "float", "number", literal.lower()))


@pytest.mark.parametrize(
    "value",
    [
        rb'{"stationData":[{"stationId":"\ud800"}]}',
        rb'{"stationData":[{"stationId":"s1","note":"x\udfffy"}]}',
    ],
    ids=["lone-surrogate-station-id", "lone-surrogate-in-record"],
)
def test_lone_surrogate_escape_is_rejected(value: bytes) -> None:
    """A ``\\uD800`` escape is valid JSON syntax but not a valid Unicode string: it could never be
    stored as UTF-8, so the message is rejected (quarantined) with a reason that says so."""
    reason = reason_of(value)
    assert reason.startswith("invalid JSON: ")
    assert "surrogate" in reason  # orjson: "str is not valid UTF-8: surrogates not allowed"


def test_paired_surrogate_escape_is_accepted_and_decoded() -> None:
    """The check is for unpaired escapes only: a pair is one code point and passes unchanged."""
    pairs = parse(rb'{"stationData":[{"stationId":"s1","note":"\ud83d\ude00"}]}')
    assert pairs == [("s1", {"stationId": "s1", "note": "\U0001f600"})]
    assert orjson.loads(orjson.dumps(pairs[0][1])) == {"stationId": "s1", "note": "\U0001f600"}


# -- wrong shapes ------------------------------------------------------------------------------------


def test_null_value_tombstone_is_rejected() -> None:
    assert "tombstone" in reason_of(None)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(b'[{"stationId":"s1"}]', "list"), (b'"text"', "str"), (b"42", "int"), (b"null", "NoneType"), (b"true", "bool")],
)
def test_top_level_non_object_is_rejected(value: bytes, type_name: str) -> None:
    reason = reason_of(value)
    assert "top-level JSON value" in reason
    assert f"is {type_name}, not an object" in reason


def test_missing_station_list_is_rejected() -> None:
    assert "missing 'stationData'" in reason_of(encode({"stations": [{"stationId": "s1"}]}))


@pytest.mark.parametrize(
    ("station_data", "type_name"),
    [({"stationId": "s1"}, "dict"), ("s1", "str"), (None, "NoneType"), (3, "int")],
)
def test_station_list_not_a_list_is_rejected(station_data: Any, type_name: str) -> None:
    assert f"'stationData' is {type_name}, not a list" in reason_of(encode({"stationData": station_data}))


def test_empty_station_list_is_rejected() -> None:
    assert "'stationData' is empty" in reason_of(message())


@pytest.mark.parametrize("entry", ["s2", 7, None, ["stationId", "s2"]], ids=["str", "int", "null", "list"])
def test_entry_not_an_object_is_rejected(entry: Any) -> None:
    assert "stationData[1] is not an object" in reason_of(message({"stationId": "s1"}, entry))


@pytest.mark.parametrize(
    "entry",
    [
        {"value": 1},
        {"stationId": ""},
        {"stationId": "   "},
        {"stationId": 17.0},
        {"stationId": 1.5},
        {"stationId": True},
        {"stationId": None},
        {"stationId": ["s"]},
        {"stationId": {"id": 1}},
    ],
    ids=["missing", "empty", "blank", "float-integral", "float", "bool", "null", "list", "object"],
)
def test_bad_station_id_is_rejected(entry: dict[str, Any]) -> None:
    reason = reason_of(message({"stationId": "s1"}, {"stationId": "s2"}, entry))
    assert "stationData[2] has no string or integer 'stationId'" in reason


def test_integer_station_ids_are_their_decimal_strings() -> None:
    """A real feed often numbers its stations: the id is the integer's decimal string, the record is
    passed on as it came."""
    entries = [{"stationId": 1, "v": "a"}, {"stationId": -7}, {"stationId": 0}, {"stationId": 2**63 - 1}]
    assert parse(message(*entries)) == [("1", entries[0]), ("-7", entries[1]), ("0", entries[2]), (str(2**63 - 1), entries[3])]


def test_integer_and_string_ids_name_the_same_station() -> None:
    """1 and "1" are one station: counted once against max_stations, like any repeated id."""
    cfg = TopicConfig(max_stations=1)
    assert [sid for sid, _ in parse(message({"stationId": 1}, {"stationId": "1"}), cfg)] == ["1", "1"]
    assert "too many stations: 2 > max 1" in reason_of(message({"stationId": 1}, {"stationId": 2}), cfg)


def test_over_long_station_id_is_rejected() -> None:
    reason = reason_of(message({"stationId": "x" * (MAX_STATION_ID_LENGTH + 1)}))
    assert f"longer than {MAX_STATION_ID_LENGTH} characters" in reason
    assert "stationData[0].stationId" in reason


def test_station_id_of_max_length_is_accepted() -> None:
    sid = "x" * MAX_STATION_ID_LENGTH
    assert [s for s, _ in parse(message({"stationId": sid}))] == [sid]


def test_whole_message_is_rejected_when_one_entry_is_bad() -> None:
    """The whole message is quarantined: nothing is half-dispatched."""
    value = message({"stationId": "s1"}, {"stationId": "s2"}, {"nope": True}, {"stationId": "s4"})
    assert "stationData[2]" in reason_of(value)


# -- size limits ---------------------------------------------------------------------------------


def test_oversized_message_is_rejected_with_its_size() -> None:
    value = message({"stationId": "s1", "blob": "x" * 2000})
    reason = reason_of(value, max_bytes=1000)
    assert "oversized message" in reason
    assert f"{len(value)} bytes" in reason
    assert "max 1000" in reason


def test_oversized_garbage_reports_size_before_anything_else() -> None:
    value = b"\xff" * 5000
    reason = reason_of(value, max_bytes=4096)
    assert "oversized message: 5000 bytes" in reason


def test_message_of_exactly_max_bytes_is_accepted() -> None:
    value = message({"stationId": "s1"})
    assert parse(value, max_bytes=len(value)) == [("s1", {"stationId": "s1"})]


def test_too_many_stations_default_config_is_rejected() -> None:
    limit = CFG.max_stations
    value = message(*({"stationId": f"s{i}"} for i in range(limit + 1)))
    assert len(value) <= MAX_BYTES
    assert f"too many stations: {limit + 1} > max {limit}" in reason_of(value)


def test_exactly_max_stations_default_config_is_accepted() -> None:
    limit = CFG.max_stations
    pairs = parse(message(*({"stationId": f"s{i}"} for i in range(limit))))
    assert len(pairs) == limit


def test_too_many_stations_small_config_is_rejected() -> None:
    cfg = TopicConfig(max_stations=2)
    value = message({"stationId": "a"}, {"stationId": "b"}, {"stationId": "c"})
    assert "too many stations: 3 > max 2" in reason_of(value, cfg)


def test_station_limit_counts_distinct_stations() -> None:
    cfg = TopicConfig(max_stations=2)
    pairs = parse(message({"stationId": "a"}, {"stationId": "b"}, {"stationId": "a"}), cfg)
    assert [s for s, _ in pairs] == ["a", "b", "a"]


# -- valid messages ------------------------------------------------------------------------------


def test_valid_message_returns_pairs_in_order_with_records_unchanged() -> None:
    entries = [
        {"stationId": "s2", "t": 1.5, "tags": ["a", "b"], "nested": {"k": [1, {"z": None}]}},
        {"stationId": "s1", "ok": True, "n": -(2**63)},
    ]
    pairs = parse(message(*entries, source="x", version=2))
    assert pairs == [("s2", entries[0]), ("s1", entries[1])]


def test_configurable_field_names() -> None:
    cfg = TopicConfig(station_list_field="items", station_id_field="id")
    value = encode({"items": [{"id": "A", "v": 1}, {"id": "B", "v": 2}], "stationData": "ignored"})
    assert parse(value, cfg) == [("A", {"id": "A", "v": 1}), ("B", {"id": "B", "v": 2})]


def test_configurable_field_names_in_reasons() -> None:
    cfg = TopicConfig(station_list_field="items", station_id_field="id")
    assert "missing 'items'" in reason_of(message({"stationId": "s1"}), cfg)
    assert "items[0] has no string or integer 'id'" in reason_of(encode({"items": [{"stationId": "s1"}]}), cfg)
    assert "'items' is empty" in reason_of(encode({"items": []}), cfg)
    assert "'items' is str, not a list" in reason_of(encode({"items": "x"}), cfg)
    assert "items[0] is not an object" in reason_of(encode({"items": [1]}), cfg)


def test_duplicate_station_within_one_message_is_kept_as_two_records_in_order() -> None:
    entries = [{"stationId": "s1", "i": 0}, {"stationId": "s2", "i": 1}, {"stationId": "s1", "i": 2}]
    assert parse(message(*entries)) == [("s1", entries[0]), ("s2", entries[1]), ("s1", entries[2])]


@pytest.mark.parametrize("sid", ["Zürich-Hbf", "東京駅", "станция-7", "🚉-1", "a b\tc", "ÅÄÖ" * 80])
def test_unicode_station_ids(sid: str) -> None:
    for value in (message({"stationId": sid}), json.dumps({"stationData": [{"stationId": sid}]}, ensure_ascii=False).encode()):
        assert parse(value) == [(sid, {"stationId": sid})]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 1000,
        "{" * 1000,
        "]]]}}}" + "[" * 200,
        '\\"' + "[" * 200,  # an escaped quote does not end the string
        "\\\\" + "[{" * 100,  # an escaped backslash before brackets
    ],
    ids=["open-brackets", "open-braces", "mixed", "escaped-quote", "escaped-backslash"],
)
def test_brackets_inside_strings_do_not_count_as_nesting(text: str) -> None:
    json_text = json.dumps(text)
    value = b'{"stationData":[{"stationId":"s[1]","note":' + json_text.encode() + b"}]}"
    assert parse(value) == [("s[1]", {"stationId": "s[1]", "note": text})]


def test_string_ending_in_escaped_backslash_then_real_nesting_is_counted() -> None:
    """After ``"\\\\"`` the string is closed, so the brackets that follow are real nesting."""
    value = b'{"stationData":[{"stationId":"s1","a":"\\\\","b":' + b"[" * 100 + b"]" * 100 + b"}]}"
    assert f"nesting deeper than {MAX_DEPTH}" in reason_of(value)


def test_brackets_in_strings_plus_real_nesting_at_the_limit_is_accepted() -> None:
    levels = MAX_DEPTH - 3
    value = b'{"stationData":[{"stationId":"s1","s":"' + b"[{" * 500 + b'","deep":' + b"[" * levels + b"]" * levels + b"}]}"
    [(sid, record)] = parse(value)
    assert sid == "s1"
    assert record["s"] == "[{" * 500
