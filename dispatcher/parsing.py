"""Turn one Kafka message value into (station id, record) pairs, or say precisely why not.

The whole message is quarantined when any part of it is bad (missing or empty station list, an
entry that is not an object, a missing/over-long station id or one that is neither a string nor an
integer): nothing is half-dispatched, and the operator re-dispatches the fixed message as one unit.
An integer station id is its decimal string (``1`` is station ``"1"``); floats and booleans are
refused.  Pathological JSON is rejected rather than silently changed: NaN/Infinity, numbers that
overflow a float, integers beyond 64 bits (which float-based parsers round), unpaired UTF-16
surrogate escapes, and nesting deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from batchfleet.settings import TopicConfig

__all__ = ["MAX_DEPTH", "MAX_STATION_ID_LENGTH", "BadMessage", "ParsedMessage", "parse_message", "parse_stations"]

MAX_DEPTH = 64
MAX_STATION_ID_LENGTH = 256
_INT_LIMIT = 2**63


class BadMessage(ValueError):
    """The message cannot become part of a batch; ``reason`` says why, for the quarantine entry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise BadMessage(f"invalid JSON: {name} is not allowed")


def _checked_int(text: str) -> int:
    if len(text) > 20:
        raise BadMessage(f"invalid JSON: integer with {len(text)} digits exceeds 64 bits")
    value = int(text)
    if not -_INT_LIMIT <= value < _INT_LIMIT:
        raise BadMessage(f"invalid JSON: integer {text} exceeds 64 bits")
    return value


def _checked_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadMessage(f"invalid JSON: number {text[:40]} overflows a 64-bit float")
    return value


_LONE_SURROGATE_HINT = re.compile(r"\\u[dD][89a-fA-F]")


def _check_encodable(doc: Any) -> None:
    """A \\uD800-style escape without its pair parses, but can never be stored as UTF-8."""
    try:
        orjson.dumps(doc)
    except TypeError as exc:
        raise BadMessage(f"invalid JSON: {exc}") from exc


def _depth_exceeds(text: str, limit: int) -> bool:
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def decode_json(value: bytes | None, max_bytes: int) -> Any:
    if value is None:
        raise BadMessage("empty message: null value (tombstone)")
    if len(value) > max_bytes:
        raise BadMessage(f"oversized message: {len(value)} bytes > max {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth_exceeds(text, MAX_DEPTH):
        raise BadMessage(f"invalid JSON: nesting deeper than {MAX_DEPTH}")
    try:
        doc = json.loads(text, parse_constant=_reject_constant, parse_int=_checked_int, parse_float=_checked_float)
    except BadMessage:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"invalid JSON: {exc}") from exc
    if _LONE_SURROGATE_HINT.search(text):
        _check_encodable(doc)
    return doc


def _station_id(entry: object, index: int, cfg: TopicConfig) -> str:
    field = cfg.station_list_field
    if not isinstance(entry, dict):
        raise BadMessage(f"{field}[{index}] is not an object")
    sid = entry.get(cfg.station_id_field)
    if isinstance(sid, int) and not isinstance(sid, bool):
        sid = str(sid)  # {"stationId": 1} is station "1"; floats and booleans stay refused
    if not isinstance(sid, str) or not sid.strip():
        raise BadMessage(f"{field}[{index}] has no string or integer {cfg.station_id_field!r}")
    if len(sid) > MAX_STATION_ID_LENGTH:
        raise BadMessage(f"{field}[{index}].{cfg.station_id_field} is longer than {MAX_STATION_ID_LENGTH} characters")
    return sid


@dataclass(frozen=True)
class ParsedMessage:
    stations: list[tuple[str, dict[str, Any]]]
    priority: str | None  # from the topic's priority_field, when configured and present


def parse_stations(value: bytes | None, cfg: TopicConfig, max_bytes: int) -> list[tuple[str, dict[str, Any]]]:
    """(station id, record) pairs of one message, in message order; raises BadMessage."""
    return parse_message(value, cfg, max_bytes).stations


def parse_message(value: bytes | None, cfg: TopicConfig, max_bytes: int) -> ParsedMessage:
    """The message's stations (and priority field); raises BadMessage."""
    doc = decode_json(value, max_bytes)
    field = cfg.station_list_field
    if not isinstance(doc, dict):
        raise BadMessage(f"top-level JSON value is {type(doc).__name__}, not an object")
    if field not in doc:
        raise BadMessage(f"missing {field!r}")
    entries = doc[field]
    if not isinstance(entries, list):
        raise BadMessage(f"{field!r} is {type(entries).__name__}, not a list")
    if not entries:
        raise BadMessage(f"{field!r} is empty")
    pairs = [(_station_id(entry, i, cfg), entry) for i, entry in enumerate(entries)]
    distinct = len({sid for sid, _ in pairs})
    if distinct > cfg.max_stations:
        raise BadMessage(f"too many stations: {distinct} > max {cfg.max_stations}")
    priority = doc.get(cfg.priority_field) if cfg.priority_field else None
    return ParsedMessage(pairs, str(priority) if isinstance(priority, str | int) else None)
