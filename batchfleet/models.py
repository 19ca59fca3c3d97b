"""Typed values exchanged between the services and the store."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel

__all__ = [
    "BatchSpec",
    "Claim",
    "JobShape",
    "Outcome",
    "OutcomeStatus",
    "PartitionRange",
    "QuarantineEntry",
    "RecordResult",
    "RecordedOutcomes",
    "StationRecord",
    "Summary",
    "UploadPayload",
]

OutcomeStatus = Literal["ok", "empty", "failed"]
# "group": a job carries several stations (run_group); "station": one station per job (run_station), the
# shape workers of earlier releases understand
JobShape = Literal["group", "station"]
StationRecord = Literal["recorded", "duplicate", "late", "unknown", "stale"]


@dataclass(frozen=True)
class PartitionRange:
    """The Kafka offsets of one partition that a dispatch unit covers."""

    topic: str
    partition: int
    first_offset: int
    next_offset: int


@dataclass
class BatchSpec:
    """A batch as the dispatcher built it: ordered stations with their records."""

    batch_id: str
    topic: str
    stations: dict[str, list[dict[str, Any]]]  # insertion order = Kafka order of first appearance
    ranges: list[PartitionRange]
    timeout_s: float
    retention_s: int
    late_policy: str = "drop"
    messages: int = 0
    priority: str = "normal"
    queue_boost_s: float = 0.0
    quorum_needed: int = 0  # 0: no quorum policy
    quorum_grace_s: float = 0.0
    group_sizes: list[int] = field(default_factory=list)  # stations per job, in station order; [] = one job
    job_shape: JobShape = "group"
    # drawn anew for every creation: a batch that Redis lost and the dispatcher created again is another
    # incarnation, whose jobs have other ids (batchfleet/keys.py)
    incarnation: str = field(default_factory=lambda: secrets.token_hex(4))


@dataclass(frozen=True)
class Outcome:
    """What one station produced."""

    status: OutcomeStatus
    result: dict[str, Any] | None = None
    error: str | None = None
    duration_ms: float = 0.0
    worker: str = ""
    attempt: int = 1

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"status": self.status, "duration_ms": round(self.duration_ms, 3)}
        if self.result is not None:
            data["result"] = self.result
        if self.error is not None:
            data["error"] = self.error
        if self.worker:
            data["worker"] = self.worker
        data["attempt"] = self.attempt
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Outcome:
        data = orjson.loads(raw)
        return cls(
            status=data["status"],
            result=data.get("result"),
            error=data.get("error"),
            duration_ms=float(data.get("duration_ms", 0.0)),
            worker=data.get("worker", ""),
            attempt=int(data.get("attempt", 1)),
        )


@dataclass(frozen=True)
class RecordResult:
    """What record_outcome said."""

    status: Literal["recorded", "complete", "quorum", "duplicate", "late", "unknown", "stale"]
    done: int
    expected: int


_RECORD_CODES: dict[str, StationRecord] = {"r": "recorded", "d": "duplicate", "l": "late", "u": "unknown", "s": "stale"}


@dataclass(frozen=True)
class RecordedOutcomes:
    """What record_outcome said about several stations of one batch recorded in one call."""

    kind: Literal["complete", "quorum", "recorded", "unchanged"]
    done: int
    expected: int
    codes: str  # one letter per station, in call order: r(ecorded) d(uplicate) l(ate) u(nknown) s(tale)

    @property
    def event(self) -> Literal["complete", "quorum", ""]:
        """The batch event this call caused, if any."""
        return self.kind if self.kind in ("complete", "quorum") else ""

    def status(self, index: int) -> StationRecord:
        return _RECORD_CODES[self.codes[index]]

    def count(self, status: StationRecord) -> int:
        return self.codes.count(status[0])


@dataclass
class Claim:
    """A leased, finalized batch, ready to upload."""

    batch_id: str
    token: str
    now_ms: int
    meta: dict[str, str]
    outcomes: dict[str, Outcome]
    payload: bytes | None
    stations: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.meta.get("reason", "deadline")

    @property
    def topic(self) -> str:
        return self.meta.get("topic", "")

    @property
    def expected(self) -> int:
        return int(self.meta.get("expected", "0"))

    @property
    def first_claim(self) -> bool:
        return self.meta.get("claims", "1") == "1"


@dataclass(frozen=True)
class QuarantineEntry:
    """A Kafka message that could not become a batch."""

    topic: str
    partition: int
    offset: int
    reason: str
    value: bytes
    size: int
    advance_offset: bool


class Summary(BaseModel):
    expected: int
    ok: int
    failed: int
    empty: int
    missing: int
    late: int


class UploadPayload(BaseModel):
    """The one JSON object uploaded per batch."""

    batch_id: str
    topic: str
    created_at: float
    finalized_at: float
    reason: Literal["complete", "deadline", "quorum"]
    results: list[dict[str, Any]]
    summary: Summary
    failed: dict[str, str]
    empty: list[str]
    missing: list[str]
