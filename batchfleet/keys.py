"""Every Redis key name batchfleet uses.  No other module formats a key.

The keyspace is split into ``N`` shards (``BATCHFLEET_SHARDS``).  Every Kafka partition belongs to
one shard, and everything a Lua transition touches for a batch of that partition — the batch's own
keys, its station jobs, its deadline entry, its wake-up, the partition's offsets and the counters —
carries the shard's hash tag, so every transition runs in one Redis Cluster slot.  A single Redis
runs the same layout.  Process heartbeats and the layout record are plain keys that no script
touches.

Layout (prefix ``bf``; ``{T}`` is a shard's hash tag, e.g. ``{bf:s3.17}``)::

    {T}:b:BATCH              hash   batch metadata (state, topic, created_ms, deadline_ms, ...)
    {T}:b:BATCH:in           hash   the expected stations (station id -> "")
    {T}:b:BATCH:out          hash   station id -> JSON outcome (first one wins)
    {T}:b:BATCH:late         hash   station id -> JSON outcome that arrived after finalization
    {T}:b:BATCH:payload      string the frozen upload payload (retries send the same bytes)
    {T}:due                  zset   batch id -> ms (server time) when an aggregator must act
    {T}:leases               zset   batch id -> ms when the current upload lease runs out
    {T}:ready                list   wake-up signal: batch ids that just completed
    {T}:dead                 zset   dead-lettered batch id -> ms when it was given up
    {T}:recent               list   the most recently finished batch ids (newest first)
    {T}:batches              zset   every batch id -> created ms (index for `inspect batches`; capped)
    {T}:fence                string fencing-token counter for upload leases
    {T}:offsets              hash   "TOPIC:PARTITION" -> next Kafka offset to ingest
    {T}:stats                hash   counters (``status`` sums the shards)
    {T}:rates                hash   uploaded stations per 10-s slot of the last hour (a ring of 360 slots)
    {T}:quarantine           zset   quarantined message id -> ms when quarantined
    {T}:q:TOPIC:P:OFFSET     hash   one quarantined message: reason, topic, partition, offset, raw value
    {T}:queue                zset   the shard's arq queue
    arq:job:{T}:BATCH#N@I    string arq job (JSON) of group N of incarnation I: several stations of the batch
                                   with their records
    arq:job:{T}:BATCH@I:STATION string arq job (JSON) of one station of incarnation I (a re-run after its
                                   group's worker died); without ``@I`` for a batch dispatched while a worker
                                   of an earlier release was alive; arq:in-progress:/arq:retry: keys alike
    bf:layout                hash   the shard count and tag scheme every process must agree with
    bf:procs                 zset   "ROLE:HOST:PID" -> ms of its last heartbeat (index for status/health)
    bf:proc:ROLE:HOST:PID    string one live process: JSON of what it is doing, short TTL

A batch id is ``TOPIC:PARTITION:OFFSET`` of the batch's first message, e.g.
``SCHEDULE-STATION-REALTIME-DATA:0:12345``; its shard follows from its topic and partition, so no
lookup is ever needed to find a batch's keys.

An **incarnation** ``I`` (8 hex digits, the batch meta's ``inc``) is drawn each time a batch is
created.  A batch that Redis lost (an AOF restart without its tail, a failover to a lagging replica)
is created again by the fenced dispatcher under the same id but a new incarnation, so its jobs get
other ids than the jobs of the lost one: a worker still running a job of the lost incarnation can
neither finish, delete nor retry the new one's jobs, and its outcomes are refused (``record_outcome``
code ``s``, stale).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cache

from redis.crc import key_slot

__all__ = [
    "ARQ_IN_PROGRESS_PREFIX",
    "ARQ_JOB_PREFIX",
    "SLOTS",
    "Keys",
    "batch_id_for",
    "key_patterns",
    "message_id_for",
    "offset_field",
    "parse_batch_id",
    "shard_of",
    "shard_tag",
    "topic_of_batch",
]

ARQ_JOB_PREFIX = "arq:job:"  # fixed by arq; job ids carry the shard's hash tag
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"  # fixed by arq: set while a worker runs the job
ARQ_RETRY_PREFIX = "arq:retry:"  # fixed by arq: the job's try counter
ARQ_RESULT_PREFIX = "arq:result:"  # fixed by arq: a job's result (station jobs keep none)
ARQ_ABORT = "arq:abort"  # fixed by arq: a plain arq worker removes finished jobs from it
SLOTS = 16384  # Redis Cluster hash slots


def batch_id_for(topic: str, partition: int, offset: int) -> str:
    """The deterministic id of the batch whose first message is at these Kafka coordinates."""
    return f"{topic}:{partition}:{offset}"


def message_id_for(topic: str, partition: int, offset: int) -> str:
    """The id of one Kafka message (used for quarantine entries)."""
    return f"{topic}:{partition}:{offset}"


def parse_batch_id(batch_id: str) -> tuple[str, int, int]:
    """(topic, partition, offset) of ``TOPIC:PARTITION:OFFSET`` (Kafka topic names never contain ':')."""
    topic, partition, offset = batch_id.rsplit(":", 2)
    return topic, int(partition), int(offset)


def topic_of_batch(batch_id: str) -> str:
    return batch_id.rsplit(":", 2)[0]


def offset_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def shard_of(topic: str, partition: int, shards: int) -> int:
    """The shard of a Kafka partition: ``(crc32(topic) + partition) mod N``.

    Stable (a pure function of the names and N) and even: a topic's consecutive partitions go to
    consecutive shards, so P partitions spread over N shards as evenly as P/N allows."""
    return (zlib.crc32(topic.encode()) + partition) % shards


@cache
def shard_tag(prefix: str, shard: int, shards: int) -> str:
    """The hash tag of one shard, ``PREFIX:sK.SALT``.

    SALT is the smallest number that puts the tag's slot in the K-th N-th of the slot space, so the
    N shards sit at evenly spaced slots and spread evenly over primaries that own equal slot ranges
    (what ``redis-cli --cluster create`` assigns)."""
    low, high = shard * SLOTS // shards, (shard + 1) * SLOTS // shards
    salt = 0
    while not low <= key_slot(f"{prefix}:s{shard}.{salt}".encode()) < high:
        salt += 1
    return f"{prefix}:s{shard}.{salt}"


@dataclass(frozen=True)
class Keys:
    """Key names of one fleet: its prefix and its shard count."""

    prefix: str = "bf"
    shards: int = 1
    _tags: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be >= 1")
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the key prefix must not contain braces")
        object.__setattr__(self, "_tags", tuple(f"{{{shard_tag(self.prefix, k, self.shards)}}}" for k in range(self.shards)))

    # -- shards ------------------------------------------------------------------------------
    def shard_of_partition(self, topic: str, partition: int) -> int:
        return shard_of(topic, partition, self.shards)

    def shard_of_batch(self, batch_id: str) -> int:
        topic, partition, _ = parse_batch_id(batch_id)
        return shard_of(topic, partition, self.shards)

    def tag(self, shard: int) -> str:
        """``{PREFIX:sK.SALT}``: the first part of every key of shard K."""
        return self._tags[shard]

    def shard_of_job(self, job_id: str) -> int:
        """The shard of a station job id (``{TAG}:...``)."""
        return self._tags.index(job_id[: job_id.index("}") + 1])

    # -- one batch ---------------------------------------------------------------------------
    def batch(self, batch_id: str) -> str:
        return f"{self.tag(self.shard_of_batch(batch_id))}:b:{batch_id}"

    def inputs(self, batch_id: str) -> str:
        return self.batch(batch_id) + ":in"

    def outcomes(self, batch_id: str) -> str:
        return self.batch(batch_id) + ":out"

    def late(self, batch_id: str) -> str:
        return self.batch(batch_id) + ":late"

    def payload(self, batch_id: str) -> str:
        return self.batch(batch_id) + ":payload"

    def batch_keys(self, batch_id: str) -> list[str]:
        """Every per-batch key, in the order the ack script expects."""
        base = self.batch(batch_id)
        return [base, base + ":in", base + ":out", base + ":late", base + ":payload"]

    # -- jobs: one station or a group of a batch's stations (arq's key prefixes, the shard's tag) ---
    def job_id(self, batch_id: str, station_id: str, incarnation: str = "") -> str:
        """arq job id of one station: ``{TAG}:BATCH@INCARNATION:STATION`` (``{TAG}:BATCH:STATION`` without
        an incarnation: the one-station jobs a worker of an earlier release can parse)."""
        mark = f"@{incarnation}" if incarnation else ""
        return f"{self.tag(self.shard_of_batch(batch_id))}:{batch_id}{mark}:{station_id}"

    def parse_job_id(self, job_id: str) -> tuple[str, str, str]:
        """(batch id, station id, incarnation or "") of a station job id (see :meth:`job_id`)."""
        close = job_id.find("}:")
        if not job_id.startswith("{") or close < 0:
            raise ValueError(f"not a station job id: {job_id!r}")
        topic, partition, offset, station = job_id[close + 2 :].split(":", 3)
        offset, _, incarnation = offset.partition("@")  # offsets are digits: the first '@' is the mark
        return f"{topic}:{partition}:{offset}", station, incarnation

    def job(self, batch_id: str, station_id: str, incarnation: str = "") -> str:
        return ARQ_JOB_PREFIX + self.job_id(batch_id, station_id, incarnation)

    def group_job_id(self, batch_id: str, index: int, incarnation: str = "") -> str:
        """arq job id of a batch's group ``index`` (several stations in one job): ``{TAG}:BATCH#INDEX@INCARNATION``."""
        mark = f"@{incarnation}" if incarnation else ""
        return f"{self.tag(self.shard_of_batch(batch_id))}:{batch_id}#{index}{mark}"

    def group_job(self, batch_id: str, index: int, incarnation: str = "") -> str:
        return ARQ_JOB_PREFIX + self.group_job_id(batch_id, index, incarnation)

    @staticmethod
    def parse_group_job(job_id: str) -> tuple[str, str]:
        """(batch id, incarnation or "") of a group job id ``{TAG}:TOPIC:PARTITION:OFFSET#INDEX@INCARNATION``
        (topics hold no '#' or '@')."""
        close, mark = job_id.find("}:"), job_id.rfind("#")
        if not job_id.startswith("{") or close < 0 or mark < close:
            raise ValueError(f"not a group job id: {job_id!r}")
        return job_id[close + 2 : mark], job_id[mark + 1 :].partition("@")[2]

    @staticmethod
    def batch_of_group_job(job_id: str) -> str:
        """The batch id of a group job id (see :meth:`parse_group_job`)."""
        return Keys.parse_group_job(job_id)[0]

    @staticmethod
    def in_progress(job_id: str) -> str:
        return ARQ_IN_PROGRESS_PREFIX + job_id

    def queue(self, shard: int) -> str:
        return f"{self.tag(shard)}:queue"

    # -- per-shard indexes -------------------------------------------------------------------
    def due(self, shard: int) -> str:
        return f"{self.tag(shard)}:due"

    def leases(self, shard: int) -> str:
        return f"{self.tag(shard)}:leases"

    def ready(self, shard: int) -> str:
        return f"{self.tag(shard)}:ready"

    def dead(self, shard: int) -> str:
        return f"{self.tag(shard)}:dead"

    def recent(self, shard: int) -> str:
        return f"{self.tag(shard)}:recent"

    def batches(self, shard: int) -> str:
        return f"{self.tag(shard)}:batches"

    def fence(self, shard: int) -> str:
        return f"{self.tag(shard)}:fence"

    def offsets(self, shard: int) -> str:
        return f"{self.tag(shard)}:offsets"

    def stats(self, shard: int) -> str:
        return f"{self.tag(shard)}:stats"

    def rates(self, shard: int) -> str:
        """Ring of 360 ten-second slots: ``POS:t`` -> slot number, ``POS:ok|failed|empty|missing|batches`` -> count."""
        return f"{self.tag(shard)}:rates"

    def quarantine(self, shard: int) -> str:
        return f"{self.tag(shard)}:quarantine"

    def quarantined(self, message_id: str) -> str:
        """One quarantined message ``TOPIC:P:OFFSET``: in its partition's shard."""
        return f"{self.tag(self.shard_of_batch(message_id))}:q:{message_id}"

    # -- fleet-wide keys no script touches ---------------------------------------------------
    @property
    def layout(self) -> str:
        return f"{self.prefix}:layout"

    @property
    def procs(self) -> str:
        return f"{self.prefix}:procs"

    def proc(self, member: str) -> str:
        """``member`` is ``ROLE:HOST:PID``."""
        return f"{self.prefix}:proc:{member}"


class _AnyShard(Keys):
    """Key names with ``{PREFIX:s*}`` for the shard tag and a glob for the batch: Redis ACL key
    patterns of every shard, spelled by the same methods as the keys themselves."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tags", ())

    def shard_of_batch(self, batch_id: str) -> int:
        return 0

    def tag(self, shard: int) -> str:
        return f"{{{self.prefix}:s*}}"


_GLOB = frozenset("*?[]\\")


def key_patterns(prefix: str = "bf") -> dict[str, str]:
    """Redis glob patterns (ACL ``~PATTERN``) of each kind of key of the fleet with ``prefix``, for
    any shard count: kind -> pattern.  Each real key matches the pattern of its kind and no other
    (batch ids and topics hold no braces; a batch's meta key ends with its offset, a digit).
    ``arq:*`` kinds are arq's keys of station jobs (the shard's tag after arq's prefix)."""
    if _GLOB & set(prefix):
        raise ValueError(f"the key prefix {prefix!r} holds glob characters")
    Keys(prefix)  # the prefix checks of real key names (no braces)
    k = _AnyShard(prefix)
    return {
        "meta": k.batch("*[0-9]"),
        "inputs": k.inputs("*"),
        "outcomes": k.outcomes("*"),
        "late": k.late("*"),
        "payload": k.payload("*"),
        "due": k.due(0),
        "leases": k.leases(0),
        "ready": k.ready(0),
        "dead": k.dead(0),
        "recent": k.recent(0),
        "batches": k.batches(0),
        "fence": k.fence(0),
        "offsets": k.offsets(0),
        "stats": k.stats(0),
        "rates": k.rates(0),
        "quarantine": k.quarantine(0),
        "quarantined": k.quarantined("*"),
        "queue": k.queue(0),
        "queue_health": k.queue(0) + ":health-check",  # arq's health-check key of the queue it names
        "arq_job": ARQ_JOB_PREFIX + k.tag(0) + ":*",
        "arq_in_progress": ARQ_IN_PROGRESS_PREFIX + k.tag(0) + ":*",
        "arq_retry": ARQ_RETRY_PREFIX + k.tag(0) + ":*",
        "arq_result": ARQ_RESULT_PREFIX + k.tag(0) + ":*",
        "arq_abort": ARQ_ABORT,
        "layout": k.layout,
        "procs": k.procs,
        "proc": k.proc("*"),
    }
