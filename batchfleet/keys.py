"""Every Redis key name batchfleet uses.  No other module formats a key.

All of one batch's keys carry the batch id as a hash tag (``{...}``), so they share one Redis
Cluster slot.  Global indexes (deadline set, lease set, queues, offsets) are separate keys that the
create/claim/ack scripts touch together with the batch keys: batchfleet targets one Redis primary
(with replicas and Sentinel for HA), not Redis Cluster; the hash tags keep that door open.

Layout (prefix ``bf`` by default)::

    bf:b:{BATCH}            hash   batch metadata (state, topic, created_ms, deadline_ms, ...)
    bf:b:{BATCH}:in         hash   station id -> JSON list of that station's input records
    bf:b:{BATCH}:out        hash   station id -> JSON outcome (first one wins)
    bf:b:{BATCH}:late       hash   station id -> JSON outcome that arrived after finalization
    bf:b:{BATCH}:payload    string the frozen upload payload (retries send the same bytes)
    bf:due                  zset   batch id -> ms (server time) when the aggregator must act
    bf:leases               zset   batch id -> ms when the current upload lease runs out
    bf:ready                list   wake-up signal: batch ids that just completed
    bf:dead                 zset   dead-lettered batch id -> ms when it was given up
    bf:recent               list   the most recently finished batch ids (newest first)
    bf:batches              zset   every batch id -> created ms (index for `inspect batches`; capped)
    bf:fence                string fencing-token counter for upload leases
    bf:offsets              hash   "TOPIC:PARTITION" -> next Kafka offset to ingest
    bf:stats                hash   fleet-wide counters
    bf:rates                hash   uploaded stations per 10-s slot of the last hour (a ring of 360 slots)
    bf:procs                zset   "ROLE:HOST:PID" -> ms of its last heartbeat (index for status/health)
    bf:proc:ROLE:HOST:PID   string one live process: JSON of what it is doing, short TTL
    bf:quarantine           zset   quarantined message id -> ms when quarantined
    bf:q:{TOPIC:P:OFFSET}   hash   one quarantined message: reason, topic, partition, offset, raw value
    arq:job:{BATCH}:STATION string arq job (JSON), one per station; queue ``bf:queue`` by default

A batch id is ``TOPIC:PARTITION:OFFSET`` of the batch's first message, e.g.
``SCHEDULE-STATION-REALTIME-DATA:0:12345``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARQ_IN_PROGRESS_PREFIX",
    "ARQ_JOB_PREFIX",
    "Keys",
    "batch_id_for",
    "job_id_for",
    "message_id_for",
    "offset_field",
    "parse_job_id",
    "topic_of_batch",
]

ARQ_JOB_PREFIX = "arq:job:"  # fixed by arq; job ids carry the batch hash tag
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"  # fixed by arq: set while a worker runs the job


def batch_id_for(topic: str, partition: int, offset: int) -> str:
    """The deterministic id of the batch whose first message is at these Kafka coordinates."""
    return f"{topic}:{partition}:{offset}"


def message_id_for(topic: str, partition: int, offset: int) -> str:
    """The id of one Kafka message (used for quarantine entries)."""
    return f"{topic}:{partition}:{offset}"


def job_id_for(batch_id: str, station_id: str) -> str:
    """arq job id of one station: the batch id is the hash tag."""
    return f"{{{batch_id}}}:{station_id}"


def parse_job_id(job_id: str) -> tuple[str, str]:
    """(batch id, station id) of a station job id ``{BATCH}:STATION`` (batch ids never contain braces)."""
    close = job_id.find("}:")
    if not job_id.startswith("{") or close < 0:
        raise ValueError(f"not a station job id: {job_id!r}")
    return job_id[1:close], job_id[close + 2 :]


def topic_of_batch(batch_id: str) -> str:
    """The topic of a batch id ``TOPIC:PARTITION:OFFSET`` (Kafka topic names never contain ':')."""
    return batch_id.rsplit(":", 2)[0]


def offset_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "bf"

    # -- one batch ---------------------------------------------------------------------------
    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:b:{{{batch_id}}}"

    def inputs(self, batch_id: str) -> str:
        return f"{self.prefix}:b:{{{batch_id}}}:in"

    def outcomes(self, batch_id: str) -> str:
        return f"{self.prefix}:b:{{{batch_id}}}:out"

    def late(self, batch_id: str) -> str:
        return f"{self.prefix}:b:{{{batch_id}}}:late"

    def payload(self, batch_id: str) -> str:
        return f"{self.prefix}:b:{{{batch_id}}}:payload"

    def batch_keys(self, batch_id: str) -> list[str]:
        """Every per-batch key, in the order the ack script expects."""
        return [
            self.batch(batch_id),
            self.inputs(batch_id),
            self.outcomes(batch_id),
            self.late(batch_id),
            self.payload(batch_id),
        ]

    @staticmethod
    def job(batch_id: str, station_id: str) -> str:
        return ARQ_JOB_PREFIX + job_id_for(batch_id, station_id)

    @staticmethod
    def in_progress(job_id: str) -> str:
        return ARQ_IN_PROGRESS_PREFIX + job_id

    # -- global indexes ----------------------------------------------------------------------
    @property
    def due(self) -> str:
        return f"{self.prefix}:due"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    @property
    def ready(self) -> str:
        return f"{self.prefix}:ready"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def recent(self) -> str:
        return f"{self.prefix}:recent"

    @property
    def batches(self) -> str:
        return f"{self.prefix}:batches"

    @property
    def fence(self) -> str:
        return f"{self.prefix}:fence"

    @property
    def offsets(self) -> str:
        return f"{self.prefix}:offsets"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def rates(self) -> str:
        """Ring of 360 ten-second slots: ``POS:t`` -> slot number, ``POS:ok|failed|empty|missing|batches`` -> count."""
        return f"{self.prefix}:rates"

    @property
    def procs(self) -> str:
        return f"{self.prefix}:procs"

    def proc(self, member: str) -> str:
        """``member`` is ``ROLE:HOST:PID``."""
        return f"{self.prefix}:proc:{member}"

    @property
    def quarantine(self) -> str:
        return f"{self.prefix}:quarantine"

    def quarantined(self, message_id: str) -> str:
        return f"{self.prefix}:q:{{{message_id}}}"
