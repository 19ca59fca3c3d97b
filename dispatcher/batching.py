"""Plan one poll's worth of Kafka messages into dispatch units: batches and quarantine entries.

Rules (pure functions, no I/O):
- A batch never mixes topics or shards.  ``poll`` mode: all of one topic's messages in the poll
  whose partitions belong to one shard form one batch (split only when it would exceed the topic's
  ``max_stations``); ``message`` mode: each message is its own batch.
- A station seen in several messages of one batch gets one job; its records are merged in Kafka
  order (partition, then offset).
- The batch id is ``TOPIC:PARTITION:OFFSET`` of the batch's first valid message.
- Priority: a message's level comes from its Kafka header (``priority_header``), else its
  ``priority_field``, else the topic's default; unknown names count as the default.  A poll batch
  takes the most urgent level (shortest deadline) of its messages: splitting a poll by level would
  break the one-range-per-partition offset rule below.
- Stations travel in jobs of several stations (``group_sizes``): a batch becomes ``ceil(n / per_job)``
  jobs, but never fewer than the live workers (so a small batch still spreads over the fleet) nor more
  than its stations; the sizes differ by at most one.
- Every message is covered by exactly one unit's offset range, so storing "next offset" with each
  unit makes ingest exactly-once.  A bad message inside a poll batch is quarantined first without
  moving offsets; the batch that follows covers its offset.  A bad message not followed by a batch
  of its topic advances the offset itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchfleet.dispatcher.parsing import BadMessage, ParsedMessage, parse_message
from batchfleet.keys import batch_id_for
from batchfleet.models import BatchSpec, PartitionRange, QuarantineEntry
from batchfleet.settings import TopicConfig

__all__ = ["KafkaMessage", "Unit", "group_sizes", "plan_dispatch"]

Unit = BatchSpec | QuarantineEntry
_KEEP_BYTES = 64 * 1024  # how much of a bad message's value the quarantine keeps


class KafkaMessage(Protocol):
    """What planning reads of an aiokafka ConsumerRecord (``headers`` is optional)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


def _quarantine(msg: KafkaMessage, reason: str, advance: bool) -> QuarantineEntry:
    value = msg.value or b""
    return QuarantineEntry(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        reason=reason,
        value=value[:_KEEP_BYTES],
        size=len(value),
        advance_offset=advance,
    )


@dataclass
class _Accumulator:
    """The batch being built, plus the bad messages its offset range covers."""

    topic: str
    cfg: TopicConfig
    first: KafkaMessage | None = None
    stations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ranges: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, next]
    bad: list[tuple[KafkaMessage, str]] = field(default_factory=list)
    messages: int = 0
    level: tuple[str, float, float] | None = None  # (name, timeout s, boost s), most urgent so far

    def cover(self, msg: KafkaMessage) -> None:
        span = self.ranges.setdefault(msg.partition, [msg.offset, msg.offset + 1])
        span[0] = min(span[0], msg.offset)
        span[1] = max(span[1], msg.offset + 1)

    def fits(self, pairs: list[tuple[str, dict[str, Any]]]) -> bool:
        new = {sid for sid, _ in pairs if sid not in self.stations}
        return not self.stations or len(self.stations) + len(new) <= self.cfg.max_stations

    def add(self, msg: KafkaMessage, parsed: ParsedMessage) -> None:
        pairs = parsed.stations
        level = self.cfg.level(_header_priority(msg, self.cfg) or parsed.priority)
        if self.level is None or level[1] < self.level[1]:
            self.level = level
        if self.first is None:
            self.first = msg
        for sid, record in pairs:
            self.stations.setdefault(sid, []).append(record)
        self.messages += 1
        self.cover(msg)

    def flush(self) -> list[Unit]:
        """The units of this accumulator, quarantines first (they must not move offsets)."""
        if self.first is None:
            return [_quarantine(m, r, advance=True) for m, r in self.bad]
        units: list[Unit] = [_quarantine(m, r, advance=False) for m, r in self.bad]
        name, timeout_s, boost_s = self.level or self.cfg.level(None)
        quorum_needed = math.ceil(self.cfg.quorum * len(self.stations) - 1e-9) if self.cfg.quorum else 0
        units.append(
            BatchSpec(
                batch_id=batch_id_for(self.topic, self.first.partition, self.first.offset),
                topic=self.topic,
                stations=self.stations,
                ranges=[PartitionRange(self.topic, p, s[0], s[1]) for p, s in sorted(self.ranges.items())],
                timeout_s=timeout_s,
                retention_s=self.cfg.retention_s,
                late_policy=self.cfg.late,
                messages=self.messages,
                priority=name,
                queue_boost_s=boost_s,
                quorum_needed=quorum_needed,
                quorum_grace_s=self.cfg.quorum_grace_s,
            )
        )
        return units


def _header_priority(msg: KafkaMessage, cfg: TopicConfig) -> str | None:
    for key, value in getattr(msg, "headers", None) or ():
        if key == cfg.priority_header and value is not None:
            return bytes(value).decode("utf-8", errors="replace")
    return None


def _ordered(messages: Iterable[KafkaMessage]) -> list[KafkaMessage]:
    return sorted(messages, key=lambda m: (m.partition, m.offset))


def _plan_poll(topic: str, msgs: list[KafkaMessage], cfg: TopicConfig, max_bytes: int) -> list[Unit]:
    units: list[Unit] = []
    acc = _Accumulator(topic, cfg)
    for msg in _ordered(msgs):
        try:
            parsed = parse_message(msg.value, cfg, max_bytes)
        except BadMessage as bad:
            acc.bad.append((msg, bad.reason))
            acc.cover(msg)
            continue
        if not acc.fits(parsed.stations):
            units += acc.flush()
            acc = _Accumulator(topic, cfg)
        acc.add(msg, parsed)
    return units + acc.flush()


def _plan_message(topic: str, msgs: list[KafkaMessage], cfg: TopicConfig, max_bytes: int) -> list[Unit]:
    units: list[Unit] = []
    for msg in _ordered(msgs):
        acc = _Accumulator(topic, cfg)
        try:
            acc.add(msg, parse_message(msg.value, cfg, max_bytes))
        except BadMessage as bad:
            acc.bad.append((msg, bad.reason))
        units += acc.flush()
    return units


def group_sizes(stations: int, per_job: int, workers: int) -> list[int]:
    """Stations per job for a batch of ``stations``: as few jobs as ``per_job`` allows, but at least one
    per live worker (capped at one station per job), sizes balanced."""
    if stations <= 0:
        return []
    jobs = min(stations, max(math.ceil(stations / max(per_job, 1)), workers, 1))
    size, bigger = divmod(stations, jobs)
    return [size + 1] * bigger + [size] * (jobs - bigger)


def plan_dispatch(
    messages: Iterable[KafkaMessage],
    topic_config: Callable[[str], TopicConfig],
    max_bytes: int,
    shard_of: Callable[[str, int], int] = lambda topic, partition: 0,
) -> list[Unit]:
    """The units to write, in an order that keeps every partition's offsets monotonic.  A batch
    never spans shards: a poll batch holds one topic's messages of one shard's partitions."""
    groups: dict[tuple[str, int], list[KafkaMessage]] = {}
    for msg in messages:
        groups.setdefault((msg.topic, shard_of(msg.topic, msg.partition)), []).append(msg)
    units: list[Unit] = []
    for topic, shard in sorted(groups):
        cfg = topic_config(topic)
        plan = _plan_poll if cfg.batching == "poll" else _plan_message
        units += plan(topic, groups[topic, shard], cfg, max_bytes)
    return units
