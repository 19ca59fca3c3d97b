"""A fake Kafka message: what ``dispatcher.batching.KafkaMessage`` asks of aiokafka's ConsumerRecord."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Msg"]


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes | None
