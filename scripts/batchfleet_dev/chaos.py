"""The chaos run: the real fleet under a producer while processes are SIGKILLed, then an exact audit.

``scripts/chaos --minutes 10 [--sentinel] [--seed N] [--json]`` (long version) and
``scripts/chaos --soak`` (50 minutes, Sentinel, >= 1,000 SIGKILLs, >= 10 Redis restarts and >= 5
Sentinel failovers required); ~1 minute versions of both run in the test suite
(``tests/integration/test_chaos.py``).  Loopback only, bounded in time:

1. A local stack: redis-server with AOF (``appendonly yes``, ``appendfsync everysec``; restarted on
   the same port and directory, so a kill -9 keeps its state) -- or, with ``--sentinel``, a primary,
   2 replicas (AOF) and 3 Sentinels, the fleet finding the primary through the Sentinels and
   waiting for both replicas before each upload (``BATCHFLEET_UPLOAD_WAIT_REPLICAS=2``) -- and the
   tansu Kafka-protocol broker (or a given bootstrap address).  2 dispatchers, 3 workers and 2 aggregators run as real
   subprocesses (``python -m batchfleet ROLE``), configured with ``BATCHFLEET_*`` variables built
   from one :class:`~batchfleet.settings.Settings`: 2 s batch deadline, 5 s retention, 5 s upload
   lease, a file uploader (``file://WORKDIR/uploads.jsonl``) and :func:`chaos_processor`.
2. A producer writes to a ``message``-mode topic (2 partitions, one message = one batch) and a
   ``poll``-mode topic (3 partitions, max 25 stations per batch, so big polls are split), per-topic
   TOML in ``BATCHFLEET_CONFIG``.  Every record carries a unique ``rid``; every valid message also
   carries a marker station ``M-<seq>`` unique to it, so the batch that held a message is known
   from any upload even after the batch's Redis keys expired.  Now and then a malformed message
   (truncated JSON, an entry without ``stationId``, an empty list, not UTF-8, NaN) is produced.
3. For the whole window, every 2-5 s a random role process is SIGKILLed and restarted 0.5-1 s
   later; redis-server is faulted 2-3 times (never in the last 20 s), alternately SIGKILLed and
   restarted, and rolled back: restarted on a copy of its AOF taken 1-2.5 s before, with groups of
   slow stations in flight (the aggregators held with SIGSTOP from the copy to the restart, so no
   upload is acknowledged in the window Redis forgets).  With
   Sentinel the Redis faults cycle through: SIGKILL of the primary (Sentinel promotes a replica;
   the old primary is restarted as a replica), ``SENTINEL FAILOVER``, SIGKILL of a replica (restarted);
   each on a settled group (every replica online), timed until the group is settled again; with
   ``lose_primary`` (the soak) the last fault SIGKILLs the primary for good.  A process
   that exits by itself is restarted too and reported as a finding (``--strict``: a violation).
4. After the producer stops: wait until every produced offset is ingested (``bf:offsets``), every
   batch is uploaded or dead (``bf:due`` and ``bf:leases`` empty) and no station job is queued; then
   wait retention + 3 s and measure.

The audit (exit status 1 on any violation):

- uploads are at-least-once keyed by batch id: lines are grouped by ``batch_id``; a repeat must be
  byte-identical (counted as a repeat), a different body is a *conflicting repeat*;
- every produced (station, record) is accounted for exactly once: in an uploaded batch's
  ``results`` (the processor echoes the record ids it received, so they must be exactly the
  records the batch's messages hold for that station, in Kafka order), or in its ``failed`` /
  ``empty`` / ``missing`` (all the station's records in that batch's messages), or, for a malformed
  message, in the quarantine (by topic/partition/offset).  A batch's expected stations (results +
  failed + empty + missing) must equal the stations of the messages whose markers it holds, its id
  must be its first message's coordinates, and no message may be in two batches;
- nothing is left behind: no batch key (``bf:b:*``) except of dead-lettered batches, no arq key;
- Redis memory is back near the baseline taken after start-up (all 7 processes connected, before
  the first message); both measurements follow ``CONFIG RESETSTAT``, which frees Redis 7's
  per-command latency histograms (~32 KB per command name on first use, ~1 MB for the commands the
  fleet uses: monitoring state, not data).  Both ``used_memory`` values are printed; the margin
  (``memory_margin_bytes``, 512 KiB) applies to ``used_memory`` minus two parts that legitimately
  differ and are printed separately: client buffers (``mem_clients_normal``: ~20 KB per open connection in Redis 7, so it
  follows how many pooled connections the live processes hold at that moment, not the data) and
  the indexes kept by design (``MEMORY USAGE`` of ``bf:batches`` -- one entry per batch, capped at
  100,000 --, ``bf:quarantine`` and ``bf:q:*`` -- kept 7 days --, ``bf:procs`` -- one member per
  killed process, kept a day --, ``bf:recent``, ``bf:stats``, ``bf:offsets``).  What else may
  remain is small (measured: under 50 KB): the Lua script cache (~15 KB), ``bf:fence``, hash-table
  and AOF buffers.  One leaked batch costs ~5-10 KB, so a leak of some 50-100 batches exceeds the
  margin, and any single leaked batch or arq key fails the key check above.

Outcomes of :func:`chaos_processor`, deterministic by station id: pool stations ``S<n>`` raise when
n % 10 == 3, return None (empty) when n % 10 == 6, sleep far past the 2 s deadline and station
budget when n % 20 == 9 (they end up ``missing``, their timeout result is ``late``), take 0.4 s
when n % 20 == 19, else return ``{"stationId", "rids"}``; markers ``M-<seq>`` always succeed.
Role logs, redis.log and uploads.jsonl stay in the work directory (``.batchfleet/chaos-*``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from batchfleet.keys import Keys, batch_id_for, message_id_for, offset_field
from batchfleet.retry import REDIS_UNAVAILABLE, Backoff, retry
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer, SentinelGroup, create_topics
from batchfleet_dev.procs import RoleProcess, role_env, stop_all

__all__ = ["ChaosConfig", "ChaosReport", "account", "chaos_processor", "main", "run_chaos"]

T = TypeVar("T")
_MAX_LISTED = 40  # violations listed per kind (all are counted)
SLOW_S = 60.0  # "slow" stations: far past any chaos deadline; the station budget cancels them


# -- the station processor (runs in the worker processes) ---------------------------------------
def station_kind(station_id: str) -> str:
    """ok | raise | empty | slow | lagging, deterministic by the station's number."""
    if not station_id.startswith("S") or not station_id[1:].isdigit():
        return "ok"
    n = int(station_id[1:])
    if n % 10 == 3:
        return "raise"
    if n % 10 == 6:
        return "empty"
    if n % 20 == 9:
        return "slow"
    if n % 20 == 19:
        return "lagging"
    return "ok"


async def chaos_processor(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``BATCHFLEET_PROCESSOR=batchfleet_dev.chaos:chaos_processor``: echoes the record ids it received."""
    kind = station_kind(station_id)
    if kind == "raise":
        raise ValueError(f"chaos: station {station_id} always fails")
    if kind == "empty":
        return None
    if kind == "slow":
        await asyncio.sleep(SLOW_S)
    elif kind == "lagging":
        await asyncio.sleep(0.4)
    return {"stationId": station_id, "rids": [r.get("rid") for r in records]}


# -- configuration ------------------------------------------------------------------------------
@dataclass
class ChaosConfig:
    duration_s: float = 600.0  # producer and kill window
    seed: int = 1
    workdir: Path | None = None  # default .batchfleet/chaos-YYYYmmdd-HHMMSS
    bootstrap: str | None = None  # a running Kafka(-protocol) broker; None starts one
    dispatchers: int = 2
    workers: int = 3
    aggregators: int = 2
    kill_every_s: tuple[float, float] = (2.0, 5.0)
    restart_after_s: tuple[float, float] = (0.5, 1.0)
    redis_events: int | None = None  # Redis faults in the window; None: 2 or 3 (fewer when the window is short)
    redis_down_s: tuple[float, float] = (0.5, 1.5)
    # Sentinel topology: a primary, ``replicas`` replicas and 3 Sentinels; the Redis faults cycle through
    # primary SIGKILL (Sentinel fails over), SENTINEL FAILOVER and replica SIGKILL (each node restarted)
    sentinel: bool = False
    replicas: int = 2
    upload_wait_replicas: int | None = None  # None: every replica (the full guarantee, README)
    # the last Sentinel fault SIGKILLs the primary and never restarts it: uploads must go on with the
    # replicas left (fewer than the WAIT asks for, so "less protection than configured")
    lose_primary: bool = False
    # single redis: every second fault is an AOF rollback: a copy of the AOF is taken, the fleet runs on
    # for ``rollback_window_s`` (groups with slow stations in flight), then Redis is SIGKILLed and
    # restarted on the copy, so it has forgotten the window (batches, records, offsets, claims)
    aof_rollbacks: bool = True
    rollback_window_s: tuple[float, float] = (1.0, 2.5)
    targets: dict[str, int] = field(default_factory=dict)  # minimum kills / redis_restarts / failovers
    batch_timeout_s: float = 2.0
    retention_s: int = 5
    lease_s: float = 5.0
    message_every_s: float = 1.0  # message-mode topic: one message (8-16 stations) per interval
    poll_every_s: float = 0.25  # poll-mode topic: one message (2-5 stations) per interval
    malformed_every_s: float = 10.0
    memory_margin_bytes: int = 512 * 1024
    settle_timeout_s: float = 180.0
    progress_every_s: float = 15.0
    strict: bool = False  # a role process that exits by itself is a violation (else a reported finding)
    log: Callable[[str], None] | None = None  # progress lines; default: stderr


@dataclass
class Produced:
    """One message as the producer wrote it."""

    seq: int
    topic: str
    partition: int
    offset: int
    records: list[tuple[str, str]]  # (station id, record id), message order
    malformed: str = ""  # the kind of damage, "" for a valid message

    @property
    def message_id(self) -> str:
        return message_id_for(self.topic, self.partition, self.offset)


def _write_topic_config(path: Path, rt_topic: str, poll_topic: str, cfg: ChaosConfig) -> None:
    path.write_text(
        f'[topics."{rt_topic}"]\nbatching = "message"\ntimeout_s = {cfg.batch_timeout_s}\n'
        f'retention_s = {cfg.retention_s}\nlate = "record"\n\n'
        f'[topics."{poll_topic}"]\nbatching = "poll"\ntimeout_s = {cfg.batch_timeout_s}\n'
        f"retention_s = {cfg.retention_s}\nmax_stations = 25\n",
        encoding="utf-8",
    )


def chaos_settings(
    redis_options: dict[str, Any], bootstrap: str, topics: list[str], workdir: Path, group: str, cfg: ChaosConfig
) -> Settings:
    return Settings(
        **redis_options,
        kafka_bootstrap_servers=bootstrap,
        topics=topics,
        kafka_group_id=group,
        processor="batchfleet_dev.chaos:chaos_processor",
        uploader=f"file://{workdir / 'uploads.jsonl'}",
        config=workdir / "topics.toml",
        batch_timeout_s=cfg.batch_timeout_s,
        retention_s=cfg.retention_s,
        lease_s=cfg.lease_s,
        upload_timeout_s=max(cfg.lease_s - 1.0, 1.0),
        upload_backoff_base_s=0.2,
        upload_backoff_max_s=2.0,
        poll_timeout_ms=200,
        poll_max_records=50,
        log_level="INFO",
    )


async def _aw(value: Awaitable[T] | T) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


async def _patiently(op: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
    """Run a Redis read, riding out a restart."""
    return await retry(op, what="chaos: reading redis", backoff=Backoff(0.2, 1.0), give_up_after_s=timeout_s)


# -- the producer -------------------------------------------------------------------------------
_MALFORMED_KINDS = ("truncated", "no-station-id", "empty-list", "not-utf8", "nan")


def _valid_message(seq: int, stations: list[str], rng: random.Random) -> tuple[bytes, list[tuple[str, str]]]:
    records = [(sid, f"{seq}.{i}") for i, sid in enumerate([f"M-{seq}", *stations])]
    entries = [{"stationId": sid, "rid": rid, "v": round(rng.uniform(0, 1000), 2)} for sid, rid in records]
    return orjson.dumps({"stationData": entries}), records


def _malformed_message(seq: int, kind: str, rng: random.Random) -> tuple[bytes, list[tuple[str, str]]]:
    """A message that must be quarantined whole, and the records it carries."""
    records = [(f"S{rng.randint(1, 40):03d}", f"{seq}.{i}") for i in range(2)]
    entries: list[dict[str, Any]] = [{"stationId": sid, "rid": rid} for sid, rid in records]
    if kind == "truncated":
        return orjson.dumps({"stationData": entries})[:-3], records
    if kind == "no-station-id":
        return orjson.dumps({"stationData": [*entries, {"rid": f"{seq}.x", "v": 1}]}), records
    if kind == "empty-list":
        return b'{"stationData": []}', []
    if kind == "not-utf8":
        return b'{"stationData": [{"stationId": "S001", "rid": "\xff\xfe"}]}', [("S001", f"{seq}.0")]
    return b'{"stationData": [{"stationId": "S002", "rid": "%d.0", "v": NaN}]}' % seq, [("S002", f"{seq}.0")]


class Producer:
    """Writes both topics at a steady pace and remembers every message's coordinates."""

    def __init__(self, bootstrap: str, rt_topic: str, poll_topic: str, cfg: ChaosConfig) -> None:
        self.bootstrap = bootstrap
        self.rt_topic = rt_topic
        self.poll_topic = poll_topic
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.messages: list[Produced] = []
        self._producer: Any = None
        self._bad = 0

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _send(self, topic: str, partitions: int, body: bytes, records: list[tuple[str, str]], bad: str) -> None:
        seq = len(self.messages)
        meta = await self._producer.send_and_wait(topic, body, partition=self.rng.randrange(partitions))
        self.messages.append(Produced(seq, topic, meta.partition, meta.offset, records, bad))

    def _stations(self, first: int, count: int, k: int) -> list[str]:
        stations = [f"S{n:03d}" for n in self.rng.sample(range(first, first + count), k)]
        if self.rng.random() < 0.1:  # a station twice in one message: one job, both records
            stations.append(stations[0])
        return stations

    async def realtime(self) -> None:
        seq = len(self.messages)
        body, records = _valid_message(seq, self._stations(1, 40, self.rng.randint(8, 16)), self.rng)
        await self._send(self.rt_topic, 2, body, records, "")

    async def poll(self) -> None:
        seq = len(self.messages)
        body, records = _valid_message(seq, self._stations(101, 60, self.rng.randint(2, 5)), self.rng)
        await self._send(self.poll_topic, 3, body, records, "")

    async def malformed(self) -> None:
        kind = _MALFORMED_KINDS[self._bad % len(_MALFORMED_KINDS)]
        self._bad += 1
        topic, partitions = (self.rt_topic, 2) if self._bad % 2 else (self.poll_topic, 3)
        body, records = _malformed_message(len(self.messages), kind, self.rng)
        await self._send(topic, partitions, body, records, kind)

    async def run(self, end_at: float) -> None:
        cfg = self.cfg
        now = time.monotonic()
        schedule: dict[Callable[[], Awaitable[None]], tuple[float, float]] = {
            self.realtime: (now, cfg.message_every_s),
            self.poll: (now, cfg.poll_every_s),
            self.malformed: (now + cfg.malformed_every_s / 2, cfg.malformed_every_s),
        }
        while True:
            action, (due, every) = min(schedule.items(), key=lambda kv: kv[1][0])
            if due >= end_at:
                return
            await asyncio.sleep(max(due - time.monotonic(), 0))
            await action()
            schedule[action] = (due + every, every)

    def end_offsets(self) -> dict[str, int]:
        """``TOPIC:PARTITION`` -> next offset after the last produced message."""
        ends: dict[str, int] = {}
        for m in self.messages:
            key = offset_field(m.topic, m.partition)
            ends[key] = max(ends.get(key, 0), m.offset + 1)
        return ends


# -- the fleet and the faults -------------------------------------------------------------------
@dataclass
class Slot:
    role: str
    index: int
    log_path: Path
    proc: RoleProcess | None = None
    down: bool = False  # killed on purpose, restart pending

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"


class Fleet:
    def __init__(self, env: dict[str, str], workdir: Path, cfg: ChaosConfig) -> None:
        self.env = env
        counts = {"dispatcher": cfg.dispatchers, "worker": cfg.workers, "aggregator": cfg.aggregators}
        self.slots = [Slot(role, i, workdir / f"{role}-{i}.log") for role, n in counts.items() for i in range(n)]
        self.kills: Counter[str] = Counter()
        self.unexpected_exits: list[str] = []
        self.paused: set[str] = set()  # roles held with SIGSTOP (a process started meanwhile too)

    def spawn(self, slot: Slot) -> None:
        slot.proc = RoleProcess(slot.role, self.env, slot.log_path)
        slot.down = False
        slot.proc.note(f"chaos: started pid {slot.proc.pid}")
        if slot.role in self.paused:
            self._signal(slot, signal.SIGSTOP)

    def _signal(self, slot: Slot, sig: signal.Signals) -> None:
        if slot.proc is not None and slot.proc.alive():
            os.kill(slot.proc.pid, sig)
            slot.proc.note(f"chaos: {sig.name} pid {slot.proc.pid}")

    def pause(self, role: str) -> None:
        self.paused.add(role)
        for slot in self.slots:
            if slot.role == role:
                self._signal(slot, signal.SIGSTOP)

    def resume(self, role: str) -> None:
        self.paused.discard(role)
        for slot in self.slots:
            if slot.role == role:
                self._signal(slot, signal.SIGCONT)

    def start_all(self) -> None:
        for slot in self.slots:
            self.spawn(slot)

    def kill(self, slot: Slot) -> None:
        if not slot.down and slot.proc is not None and not slot.proc.alive():
            self.reap()  # it died by itself just before: that is worth reporting
        slot.down = True
        if slot.proc is not None and slot.proc.alive():
            slot.proc.kill()
            self.kills[slot.role] += 1
            slot.proc.note(f"chaos: SIGKILL pid {slot.proc.pid}")

    def reap(self) -> None:
        """Restart processes that exited by themselves (and remember them: a role should not crash)."""
        for slot in self.slots:
            if slot.down or slot.proc is None or slot.proc.alive():
                continue
            what = f"{slot.name} pid {slot.proc.pid} exited by itself with {slot.proc.returncode} (log {slot.log_path})"
            self.unexpected_exits.append(what)
            slot.proc.note(f"chaos: {what}")
            self.spawn(slot)

    async def supervise(self) -> None:
        while True:
            self.reap()
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        stop_all([s.proc for s in self.slots if s.proc is not None], timeout_s=20)


def _redis_schedule(cfg: ChaosConfig, rng: random.Random) -> list[float]:
    """Offsets (s from the start) of the Redis faults: spread out, none in the last 20 s."""
    first, last = 10.0, cfg.duration_s - 20.0
    if last <= first:
        return []
    count = cfg.redis_events if cfg.redis_events is not None else rng.choice((2, 3))
    count = min(count, int((last - first) // 8) + 1)
    span = (last - first) / max(count, 1)
    return [first + i * span + rng.uniform(0, span * 0.8) for i in range(count)]


@dataclass
class Faults:
    redis_restarts: int = 0
    redis_down_s: list[float] = field(default_factory=list)
    failovers: int = 0
    failover_s: list[float] = field(default_factory=list)  # fault -> every Sentinel names the new primary
    healthy_s: list[float] = field(default_factory=list)  # fault -> group healthy again (all replicas online)
    problems: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)  # kind of each Redis fault done


class SingleRedis:
    """One redis-server with AOF (``appendfsync everysec``): a fault is a SIGKILL and a restart on the
    same port and directory, so the restart may miss the AOF's last second."""

    def __init__(self, workdir: Path) -> None:
        self.server = _start_redis(workdir / "redis")
        self.workdir = workdir

    def options(self, cfg: ChaosConfig) -> dict[str, Any]:
        return {"redis_url": self.server.url}

    def describe(self) -> str:
        return f"redis {self.server.url} (AOF)"

    async def fault(
        self, number: int, cfg: ChaosConfig, rng: random.Random, faults: Faults, say: Callable[[str], None], fleet: Fleet
    ) -> None:
        if cfg.aof_rollbacks and number % 2 == 1:
            await self._rollback(number, cfg, rng, faults, say, fleet)
            return
        down_s = rng.uniform(*cfg.redis_down_s)
        say(f"SIGKILL redis-server (down for {down_s:.1f}s)")
        started = time.monotonic()
        await asyncio.to_thread(self.server.kill)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.server.start)
        faults.redis_restarts += 1
        faults.redis_down_s.append(round(time.monotonic() - started, 2))
        faults.kinds["kill-restart"] += 1

    async def _rollback(
        self, number: int, cfg: ChaosConfig, rng: random.Random, faults: Faults, say: Callable[[str], None], fleet: Fleet
    ) -> None:
        """Redis restarts from an AOF that misses its last seconds while workers run groups (slow
        stations in flight).  The aggregators are held (SIGSTOP) from the copy to the restart: an upload
        acknowledged in a window that Redis then forgets is repeated by design (at-least-once), with
        another body if the batch is created again; the audit's exact accounting needs none of those."""
        window_s = rng.uniform(*cfg.rollback_window_s)
        saved = self.workdir / f"aof-rollback-{number}"
        say(f"AOF rollback: redis-server restarted on its AOF of {window_s:.1f}s ago")
        fleet.pause("aggregator")
        try:
            await asyncio.to_thread(shutil.copytree, self.server.directory / "appendonlydir", saved)
            await asyncio.sleep(window_s)
            started = time.monotonic()
            await asyncio.to_thread(self.server.kill)
            await asyncio.to_thread(shutil.rmtree, self.server.directory / "appendonlydir")
            await asyncio.to_thread(shutil.copytree, saved, self.server.directory / "appendonlydir")
            await asyncio.to_thread(self.server.start)
        finally:
            fleet.resume("aggregator")
        faults.redis_restarts += 1
        faults.redis_down_s.append(round(time.monotonic() - started, 2))
        faults.kinds["aof-rollback"] += 1

    def stop(self) -> None:
        self.server.stop()


_SENTINEL_FAULTS = ("primary-kill", "sentinel-failover", "replica-kill")


class SentinelRedis:
    """A primary, replicas and 3 Sentinels (:class:`SentinelGroup`); the fleet finds the primary
    through the Sentinels and WAITs for every replica before an upload."""

    def __init__(self, workdir: Path, replicas: int) -> None:
        self.group = SentinelGroup(workdir / "redis", replicas=replicas).start()

    def options(self, cfg: ChaosConfig) -> dict[str, Any]:
        wait = cfg.upload_wait_replicas if cfg.upload_wait_replicas is not None else len(self.group.nodes) - 1
        return {
            "redis_url": "redis://127.0.0.1:1/0",  # only the db is read: the Sentinels name the primary
            "redis_sentinels": self.group.addresses,
            "redis_sentinel_master": self.group.master,
            "upload_wait_replicas": wait,
        }

    def describe(self) -> str:
        ports = ", ".join(str(n.port) for n in self.group.nodes)
        return f"sentinel group: redis {ports} (AOF, primary {self.group.master_port()}), sentinels {self.group.addresses}"

    async def fault(
        self, number: int, cfg: ChaosConfig, rng: random.Random, faults: Faults, say: Callable[[str], None], fleet: Fleet
    ) -> None:
        kind = _SENTINEL_FAULTS[number % len(_SENTINEL_FAULTS)]
        if cfg.lose_primary and number == (cfg.redis_events or 0) - 1:
            kind = "primary-lost"
        group = self.group
        started = time.monotonic()
        try:
            await asyncio.to_thread(group.wait_healthy, 60.0)  # every fault hits a settled group
            old = group.master_port()
            if old is None:
                raise TimeoutError("the Sentinels disagree on the primary")
            started = time.monotonic()
            if kind == "sentinel-failover":
                say(f"SENTINEL FAILOVER (primary {old})")
                new = await asyncio.to_thread(group.failover)
                faults.failovers += 1
                faults.failover_s.append(round(time.monotonic() - started, 2))
            else:
                victim = (
                    group.node(old)
                    if kind in ("primary-kill", "primary-lost")
                    else group.node(rng.choice([n.port for n in group.nodes if n.port != old]))
                )
                say(f"SIGKILL redis-server {victim.port} ({'primary' if victim.port == old else 'replica'})")
                await asyncio.to_thread(victim.kill)
                if kind in ("primary-kill", "primary-lost"):
                    new = await asyncio.to_thread(group.wait_new_master, old)
                    faults.failovers += 1
                    faults.failover_s.append(round(time.monotonic() - started, 2))
                else:
                    new = old
                if kind == "primary-lost":  # never restarted: the group goes on with the replicas left
                    group.lose(victim)
                else:
                    await asyncio.sleep(max(rng.uniform(*cfg.redis_down_s) - (time.monotonic() - started), 0))
                    await asyncio.to_thread(group.restart_as_replica, victim)
                    faults.redis_restarts += 1
                    faults.redis_down_s.append(round(time.monotonic() - started, 2))
            healthy = await asyncio.to_thread(group.wait_healthy, 60.0)
            faults.healthy_s.append(round(time.monotonic() - started, 2))
            faults.kinds[kind] += 1
            say(f"{kind}: primary {old} -> {new}; group healthy {healthy:.1f}s later")
        except (TimeoutError, RuntimeError) as exc:
            faults.problems.append(f"{kind} at +{time.monotonic() - started:.1f}s: {exc}")
            say(f"{kind} went wrong: {exc}")

    def stop(self) -> None:
        self.group.stop()


RedisTopology = SingleRedis | SentinelRedis


async def chaos_loop(
    fleet: Fleet, redis: RedisTopology, cfg: ChaosConfig, end_at: float, faults: Faults, say: Callable[[str], None]
) -> None:
    rng = random.Random(cfg.seed + 1)
    start = time.monotonic()
    redis_at = [start + t for t in _redis_schedule(cfg, rng)]
    next_kill = start + rng.uniform(*cfg.kill_every_s)
    done = 0
    fault: asyncio.Task[None] | None = None  # a Redis fault runs beside the role kills
    try:
        while time.monotonic() < end_at or (fault is not None and not fault.done()):
            now = time.monotonic()
            if redis_at and now >= redis_at[0] and (fault is None or fault.done()):
                redis_at.pop(0)
                fault = asyncio.create_task(redis.fault(done, cfg, random.Random(rng.random()), faults, say, fleet))
                done += 1
            elif now < end_at and now >= next_kill:
                slot = rng.choice(fleet.slots)
                fleet.kill(slot)  # SIGKILL and reap: immediate
                await asyncio.sleep(rng.uniform(*cfg.restart_after_s))
                fleet.spawn(slot)
                next_kill = time.monotonic() + rng.uniform(*cfg.kill_every_s)
            else:
                await asyncio.sleep(min(0.1, max(end_at - now, 0.01)))
    finally:
        if fault is not None and not fault.done():
            fault.cancel()


# -- waiting for the fleet ----------------------------------------------------------------------
async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float) -> float | None:
    """Seconds until check() held, or None after the bound.  Redis errors count as 'not yet'."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if await check():
                return round(time.monotonic() - started, 1)
        except REDIS_UNAVAILABLE:
            pass
        await asyncio.sleep(0.25)
    return None


_MEMORY_FIELDS = (
    "used_memory",
    "used_memory_dataset",
    "used_memory_scripts",
    "mem_clients_normal",
    "mem_clients_slaves",
    "mem_replication_backlog",
)
_BUFFERS = ("mem_clients_normal", "mem_clients_slaves", "mem_replication_backlog")  # bounded by config, not data
_RETAINED = ("batches", "quarantine", "recent", "stats", "offsets")  # per shard, kept by design (capped or small)


async def _memory(store: BatchStore) -> dict[str, int]:
    """used_memory and its parts; ``retained``: MEMORY USAGE of the indexes kept by design.

    CONFIG RESETSTAT first: Redis 7 allocates a ~32 KB latency histogram for every command name on
    its first use (``latency-tracking``); that is monitoring state, not data, and would otherwise
    show up as ~1 MB of "growth" after the fleet has used its commands once."""
    await _aw(store.redis.config_resetstat())
    info = await _aw(store.redis.info("memory"))
    clients = await _aw(store.redis.info("clients"))
    out = {name: int(info.get(name, 0)) for name in _MEMORY_FIELDS}
    out["connected_clients"] = int(clients.get("connected_clients", 0))
    retained = int(await _aw(store.redis.memory_usage(store.keys.procs)) or 0)
    for shard in range(store.keys.shards):
        for name in _RETAINED:
            retained += int(await _aw(store.redis.memory_usage(getattr(store.keys, name)(shard))) or 0)
        for key in await _keys(store, store.keys.tag(shard) + ":q:*"):
            retained += int(await _aw(store.redis.memory_usage(key)) or 0)
    out["retained"] = retained
    return out


async def _dump_memory(store: BatchStore, path: Path) -> None:
    """INFO memory and MEMORY STATS, kept in the work directory for a closer look."""
    info = await _aw(store.redis.info("memory"))
    stats = await _aw(store.redis.memory_stats())
    sizes = {key: int(await _aw(store.redis.memory_usage(key)) or 0) for key in await _keys(store, "*")}
    top = dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:50])
    clients = Counter(str(c.get("name") or "-") for c in await _aw(store.redis.client_list()))
    dump = {"info": info, "memory_stats": stats, "keys": top, "clients_by_name": dict(clients.most_common())}
    data = orjson.dumps(dump, default=str, option=orjson.OPT_INDENT_2)
    await asyncio.to_thread(path.write_bytes, data)


def unexplained_growth(baseline: dict[str, int], after: dict[str, int]) -> int:
    """used_memory growth not explained by client buffers (which follow the number of open connections),
    replication buffers (the backlog fills up to ``repl-backlog-size``; with Sentinel the primary at the
    end is another server than at the start) or by the indexes kept by design: what a leak of batch or
    job state would show up in."""

    def core(m: dict[str, int]) -> int:
        return m.get("used_memory", 0) - sum(m.get(name, 0) for name in _BUFFERS) - m.get("retained", 0)

    return core(after) - core(baseline)


async def _keys(store: BatchStore, pattern: str) -> list[str]:
    found: list[str] = []
    async for key in store.redis.scan_iter(match=pattern, count=1000):
        found.append(key.decode() if isinstance(key, bytes) else str(key))
    return found


async def _wait_for_fleet(store: BatchStore, cfg: ChaosConfig) -> bool:
    want = {"dispatcher": cfg.dispatchers, "worker": cfg.workers, "aggregator": cfg.aggregators}

    async def all_beating() -> bool:
        live = await store.live_processes()
        have = Counter(member.split(":", 1)[0] for member in live)
        return all(have[role] >= n for role, n in want.items())

    return await _until(all_beating, 90) is not None


async def _progress(
    store: BatchStore, producer: Producer, fleet: Fleet, faults: Faults, end_at: float, cfg: ChaosConfig, say: Callable[[str], None]
) -> None:
    start = time.monotonic()
    while time.monotonic() < end_at:
        await asyncio.sleep(min(cfg.progress_every_s, max(end_at - time.monotonic(), 0.01)))
        try:
            stats = await store.stats()
        except REDIS_UNAVAILABLE:
            stats = {}
        say(
            f"t={time.monotonic() - start:4.0f}s produced={len(producer.messages)} "
            f"created={stats.get('batches_created', '?')} uploaded={stats.get('batches_uploaded', '?')} "
            f"quarantined={stats.get('messages_quarantined', '?')} kills={sum(fleet.kills.values())} "
            f"redis_restarts={faults.redis_restarts} failovers={faults.failovers}"
        )


@dataclass
class Settled:
    ingest_s: float | None = None
    drained_s: float | None = None
    remaining: str = ""


async def _settle(store: BatchStore, ends: dict[str, int], cfg: ChaosConfig) -> Settled:
    """Every produced offset ingested, then every batch uploaded or dead and no station job queued."""
    out = Settled()

    async def ingested() -> bool:
        stored = await store.load_offsets(ends)
        return all(stored.get(k, 0) >= v for k, v in ends.items())

    async def drained() -> bool:
        open_batches, queued = await store.open_batches()
        return open_batches == 0 and queued == 0

    out.ingest_s = await _until(ingested, cfg.settle_timeout_s)
    out.drained_s = await _until(drained, cfg.settle_timeout_s)
    if out.ingest_s is None or out.drained_s is None:
        stored = await _patiently(lambda: store.load_offsets(ends))
        open_batches, queued = await _patiently(store.open_batches)
        out.remaining = f"offsets stored {stored} vs produced {ends}; open batches {open_batches}, queued jobs {queued}"
    return out


# -- the audit ----------------------------------------------------------------------------------
@dataclass
class BatchView:
    batch_id: str
    topic: str
    status: dict[str, str]  # expected station -> ok | failed | empty | missing
    echoed: dict[str, list[str]]  # ok station -> record ids its result echoes
    dead: bool = False


class Violations:
    """Every violation is counted by kind; the first few of each kind are kept verbatim."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.listed: list[str] = []

    def add(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= _MAX_LISTED:
            self.listed.append(f"{kind}: {text}")

    def __len__(self) -> int:
        return sum(self.counts.values())


def batch_view(body: dict[str, Any], bad: Violations, *, dead: bool = False) -> BatchView:
    view = BatchView(str(body.get("batch_id")), str(body.get("topic")), {}, {}, dead)

    def put(station: str, kind: str) -> None:
        if station in view.status:
            bad.add("station listed twice", f"{view.batch_id}: {station} is {view.status[station]} and {kind}")
        view.status[station] = kind

    for result in body.get("results", []):
        station = str(result.get("stationId"))
        put(station, "ok")
        view.echoed[station] = [str(r) for r in result.get("rids", [])]
    for kind in ("failed", "empty", "missing"):
        for station in body.get(kind, []):
            put(str(station), kind)
    if body.get("summary", {}).get("expected") != len(view.status):
        bad.add("summary mismatch", f"{view.batch_id}: summary {body.get('summary')} vs {len(view.status)} stations listed")
    return view


@dataclass
class Uploads:
    bodies: dict[str, bytes] = field(default_factory=dict)  # batch id -> first body
    lines: int = 0
    repeats: int = 0  # same id, same body
    conflicting: int = 0  # same id, different body


def group_uploads(raw: bytes, bad: Violations) -> Uploads:
    up = Uploads()
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        up.lines += 1
        try:
            bid = str(orjson.loads(line)["batch_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            bad.add("corrupt upload line", f"line {number}: {line[:120]!r}")
            continue
        first = up.bodies.setdefault(bid, line)
        if first is line:
            continue
        if first == line:
            up.repeats += 1
        else:
            up.conflicting += 1
            bad.add("conflicting repeat", f"{bid}: line {number} differs from the first upload of this batch")
    return up


@dataclass
class Accounting:
    placements: Counter[str] = field(default_factory=Counter)  # record id -> times accounted for
    categories: Counter[str] = field(default_factory=Counter)  # results | failed | empty | missing | quarantine | dead
    stations: Counter[str] = field(default_factory=Counter)  # station outcomes over distinct batches
    quarantined_found: int = 0
    produced_records: int = 0
    unaccounted: int = 0
    duplicated: int = 0
    phantom: int = 0

    def place(self, rids: list[str], category: str) -> None:
        self.placements.update(rids)
        self.categories[category] += len(rids)


def _marker_owners(batches: dict[str, BatchView], bad: Violations) -> dict[int, str]:
    owners: dict[int, list[str]] = {}
    for bid, view in batches.items():
        for station in view.status:
            if station.startswith("M-") and station[2:].isdigit():
                owners.setdefault(int(station[2:]), []).append(bid)
    for seq, bids in owners.items():
        if len(bids) > 1:
            bad.add("message in several batches", f"message #{seq} is in {sorted(bids)}")
    return {seq: bids[0] for seq, bids in owners.items()}


def _attribute(
    produced: list[Produced], owners: dict[int, str], quarantined: set[str], acc: Accounting, bad: Violations
) -> dict[str, list[Produced]]:
    """Which batch holds each valid message; malformed messages are accounted for by the quarantine."""
    members: dict[str, list[Produced]] = {}
    for m in produced:
        in_quarantine = m.message_id in quarantined
        if m.malformed:
            if in_quarantine:
                acc.quarantined_found += 1
                acc.place([rid for _, rid in m.records], "quarantine")
            else:
                bad.add("malformed message not quarantined", f"{m.message_id} ({m.malformed})")
            continue
        if in_quarantine:
            bad.add("valid message quarantined", f"{m.message_id} (#{m.seq})")
        bid = owners.get(m.seq)
        if bid is None:
            bad.add("message in no batch", f"{m.message_id} (#{m.seq}, {len(m.records)} records)")
            continue
        members.setdefault(bid, []).append(m)
    return members


def _check_batch(view: BatchView, msgs: list[Produced], acc: Accounting, bad: Violations) -> None:
    bid = view.batch_id
    if view.dead:
        bad.add("dead-lettered batch", bid)
    msgs = sorted(msgs, key=lambda m: (m.partition, m.offset))
    if not msgs:
        bad.add("batch without produced messages", bid)
        return
    first = batch_id_for(msgs[0].topic, msgs[0].partition, msgs[0].offset)
    if first != bid or any(m.topic != view.topic for m in msgs):
        bad.add("batch id or topic mismatch", f"{bid} (topic {view.topic}) holds messages starting at {first}")
    records: dict[str, list[str]] = {}
    for m in msgs:
        for station, rid in m.records:
            records.setdefault(station, []).append(rid)
    if set(records) != set(view.status):
        extra, lacking = sorted(set(view.status) - set(records)), sorted(set(records) - set(view.status))
        bad.add("expected stations mismatch", f"{bid}: unexpected {extra[:5]}, not expected {lacking[:5]}")
    for station, kind in view.status.items():
        acc.stations[kind] += 1
        rids = records.get(station, [])
        if kind != "ok":
            acc.place(rids, "dead" if view.dead else kind)
            continue
        echoed = view.echoed.get(station, [])
        if echoed != rids:
            bad.add("result records mismatch", f"{bid}/{station}: echoed {echoed[:6]}, its messages hold {rids[:6]}")
        acc.place(echoed, "dead" if view.dead else "results")


def _count(produced: list[Produced], acc: Accounting, bad: Violations) -> None:
    all_rids = {rid for m in produced for _, rid in m.records}
    acc.produced_records = len(all_rids)
    for rid in sorted(all_rids):
        n = acc.placements.get(rid, 0)
        if n == 0:
            acc.unaccounted += 1
            bad.add("unaccounted record", rid)
        elif n > 1:
            acc.duplicated += 1
            bad.add("record accounted twice", f"{rid} ({n} times)")
    for rid in acc.placements:
        if rid not in all_rids:
            acc.phantom += 1
            bad.add("record never produced", rid)


def account(produced: list[Produced], batches: dict[str, BatchView], quarantined: set[str], bad: Violations) -> Accounting:
    """Every produced record exactly once: in a batch's results/failed/empty/missing, or in quarantine."""
    acc = Accounting()
    owners = _marker_owners(batches, bad)
    members = _attribute(produced, owners, quarantined, acc, bad)
    for bid, view in batches.items():
        _check_batch(view, members.get(bid, []), acc, bad)
    _count(produced, acc, bad)
    return acc


# -- the report ---------------------------------------------------------------------------------
@dataclass
class ChaosReport:
    seed: int
    duration_s: float
    workdir: str
    strict: bool = False
    messages_valid: int = 0
    messages_malformed: int = 0
    records_produced: int = 0
    batches_created: int = 0
    batches_uploaded: int = 0  # distinct ids in uploads.jsonl
    batches_dead: int = 0
    upload_lines: int = 0
    repeats: int = 0
    conflicting_repeats: int = 0
    stations: dict[str, int] = field(default_factory=dict)
    records_accounted: dict[str, int] = field(default_factory=dict)
    records_unaccounted: int = 0
    records_duplicated: int = 0
    records_phantom: int = 0
    quarantined_expected: int = 0
    quarantined_found: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    unexpected_exits: list[str] = field(default_factory=list)
    redis_topology: str = ""
    redis_restarts: int = 0
    redis_down_s: list[float] = field(default_factory=list)
    failovers: int = 0
    failover_s: list[float] = field(default_factory=list)
    redis_healthy_s: list[float] = field(default_factory=list)
    redis_problems: list[str] = field(default_factory=list)
    redis_faults: dict[str, int] = field(default_factory=dict)  # kind -> how many were done
    targets: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0  # the whole run: start-up, chaos window, settling, audit
    ingest_caught_up_s: float | None = None
    drained_s: float | None = None
    memory_baseline: dict[str, int] = field(default_factory=dict)
    memory_after: dict[str, int] = field(default_factory=dict)
    memory_growth: int = 0  # unexplained_growth(): the number the margin applies to
    memory_margin: int = 0
    leftover_keys: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    violation_counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violation_counts

    def to_json(self) -> bytes:
        return orjson.dumps({**asdict(self), "ok": self.ok}, option=orjson.OPT_INDENT_2)

    def table(self) -> str:
        rows: list[tuple[str, str]] = [
            ("seed / chaos window", f"{self.seed} / {self.duration_s:.0f}s"),
            (
                "produced messages",
                f"{self.messages_valid + self.messages_malformed} "
                f"({self.messages_valid} valid, {self.messages_malformed} malformed)",
            ),
            ("produced station records", str(self.records_produced)),
            ("batches created / uploaded / dead", f"{self.batches_created} / {self.batches_uploaded} / {self.batches_dead}"),
            ("upload lines", str(self.upload_lines)),
            ("repeats (same id + body)", str(self.repeats)),
            ("conflicting repeats", f"{self.conflicting_repeats}  (must be 0)"),
            ("station outcomes", _pairs(self.stations)),
            ("records accounted", f"{sum(self.records_accounted.values())}: {_pairs(self.records_accounted)}"),
            ("records unaccounted", f"{self.records_unaccounted}  (must be 0)"),
            ("records twice / never produced", f"{self.records_duplicated} / {self.records_phantom}  (must be 0)"),
            ("quarantined (expected / found)", f"{self.quarantined_expected} / {self.quarantined_found}"),
            ("kills", f"{sum(self.kills.values())}: {_pairs(self.kills)}"),
            (
                "roles that exited by themselves",
                f"{len(self.unexpected_exits)}  (restarted; listed below; "
                f"{'a violation' if self.strict else 'a finding, --strict fails on it'})",
            ),
            ("redis", self.redis_topology),
            ("redis faults", _pairs(self.redis_faults)),
            ("redis restarts (kill -> restarted, s)", f"{self.redis_restarts} {_spread(self.redis_down_s)}"),
            ("sentinel failovers (-> new primary, s)", f"{self.failovers} {_spread(self.failover_s)}"),
            ("redis fault -> group healthy (s)", _spread(self.redis_healthy_s)),
            ("targets (kills / restarts / failovers)", _targets(self)),
            ("whole run", f"{self.elapsed_s / 60:.1f} min"),
            ("ingest caught up / drained after", f"{self.ingest_caught_up_s}s / {self.drained_s}s"),
            (
                "redis used_memory baseline / after",
                f"{_mib(self.memory_baseline.get('used_memory', 0))} / {_mib(self.memory_after.get('used_memory', 0))}",
            ),
            (
                "  client + replication buffers (connections)",
                f"{_buffers(self.memory_baseline):,} / {_buffers(self.memory_after):,} B "
                f"({self.memory_baseline.get('connected_clients')} / "
                f"{self.memory_after.get('connected_clients')})",
            ),
            ("  retained indexes (bf:batches ...)", _mem_pair(self.memory_baseline, self.memory_after, "retained")),
            ("  growth beyond those / margin", f"{self.memory_growth:+,} B / {self.memory_margin:,} B"),
            ("leftover keys", _pairs(self.leftover_keys) or "none"),
            ("violations", "none" if self.ok else _pairs(self.violation_counts)),
        ]
        width, vwidth = max(len(k) for k, _ in rows), max(len(v) for _, v in rows)
        line = "+" + "-" * (width + 2) + "+" + "-" * (vwidth + 2) + "+"
        out = [line, f"| {'chaos run':<{width}} | {'PASS' if self.ok else 'FAIL':<{vwidth}} |", line]
        out += [f"| {k:<{width}} | {v:<{vwidth}} |" for k, v in rows]
        out.append(line)
        out += self.violations[:60]
        out += [f"exited by itself: {e}" for e in self.unexpected_exits[:20]]
        return "\n".join(out)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"(min {ordered[0]:.1f}, median {ordered[len(ordered) // 2]:.1f}, max {ordered[-1]:.1f})"


def _targets(report: ChaosReport) -> str:
    if not report.targets:
        return "none set"
    have = {"kills": sum(report.kills.values()), "redis_restarts": report.redis_restarts, "failovers": report.failovers}
    return " ".join(f"{name} {have.get(name, 0)}>={want}" for name, want in report.targets.items())


def _buffers(memory: dict[str, int]) -> int:
    return sum(memory.get(name, 0) for name in _BUFFERS)


def _pairs(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _mib(n: int) -> str:
    return f"{n:,} B ({n / 1048576:.2f} MiB)"


def _mem_pair(before: dict[str, int], after: dict[str, int], name: str) -> str:
    return f"{before.get(name, 0):,} / {after.get(name, 0):,} B"


def _classify_keys(keys: list[str], k: Keys, dead: set[str]) -> dict[str, int]:
    """Leftover keys that must not exist after retention: batch keys (except dead-lettered ones) and arq job state."""
    found: Counter[str] = Counter()
    dead_keys = {key for bid in dead for key in k.batch_keys(bid)}
    batch_prefixes = tuple(k.tag(shard) + ":b:" for shard in range(k.shards))
    for key in keys:
        if key.startswith(batch_prefixes) and key not in dead_keys:
            found["batch"] += 1
        elif key.startswith(("arq:job:", "arq:in-progress:", "arq:retry:", "arq:result:")):
            found[key.split(":", 2)[1]] += 1
    return dict(found)


@dataclass
class Collected:
    stats: dict[str, int]
    dead: dict[str, bytes | None]
    quarantined: set[str]
    leftover: dict[str, int]
    memory_after: dict[str, int]


async def _collect(store: BatchStore) -> Collected:
    dead_ids = await _patiently(store.dead_batch_ids)
    dead: dict[str, bytes | None] = {}
    for bid in dead_ids:
        dead[bid] = await _patiently(lambda bid=bid: store.payload(bid))  # type: ignore[misc]
    quarantined = {str(e["id"].decode()) for e in await _patiently(lambda: store.quarantined(limit=1_000_000))}
    keys = await _patiently(lambda: _keys(store, "*"))  # also makes Redis drop expired keys now
    leftover = _classify_keys(keys, store.keys, set(dead_ids))
    memory_after = await _patiently(lambda: _memory(store))
    return Collected(await _patiently(store.stats), dead, quarantined, leftover, memory_after)


def build_report(
    cfg: ChaosConfig,
    workdir: Path,
    produced: list[Produced],
    uploads_raw: bytes,
    got: Collected,
    fleet: Fleet,
    faults: Faults,
    settled: Settled,
    baseline: dict[str, int],
    topology: str = "",
    started: float = 0.0,
) -> ChaosReport:
    bad = Violations()
    uploads = group_uploads(uploads_raw, bad)
    batches = {bid: batch_view(orjson.loads(body), bad) for bid, body in uploads.bodies.items()}
    for bid, body in got.dead.items():
        if bid not in batches and body is not None:
            batches[bid] = batch_view(orjson.loads(body), bad, dead=True)
        elif bid not in batches:
            bad.add("dead-lettered batch without payload", bid)
    acc = account(produced, batches, got.quarantined, bad)
    _fleet_checks(cfg, got, fleet, settled, baseline, uploads, bad)
    _fault_checks(cfg, fleet, faults, bad)
    return ChaosReport(
        seed=cfg.seed,
        duration_s=cfg.duration_s,
        workdir=str(workdir),
        strict=cfg.strict,
        messages_valid=sum(1 for m in produced if not m.malformed),
        messages_malformed=sum(1 for m in produced if m.malformed),
        records_produced=acc.produced_records,
        batches_created=got.stats.get("batches_created", 0),
        batches_uploaded=len(uploads.bodies),
        batches_dead=len(got.dead),
        upload_lines=uploads.lines,
        repeats=uploads.repeats,
        conflicting_repeats=uploads.conflicting,
        stations=dict(acc.stations),
        records_accounted=dict(acc.categories),
        records_unaccounted=acc.unaccounted,
        records_duplicated=acc.duplicated,
        records_phantom=acc.phantom,
        quarantined_expected=sum(1 for m in produced if m.malformed),
        quarantined_found=acc.quarantined_found,
        kills=dict(fleet.kills),
        unexpected_exits=list(fleet.unexpected_exits),
        redis_topology=topology,
        redis_restarts=faults.redis_restarts,
        redis_down_s=faults.redis_down_s,
        failovers=faults.failovers,
        failover_s=faults.failover_s,
        redis_healthy_s=faults.healthy_s,
        redis_problems=faults.problems,
        redis_faults=dict(faults.kinds),
        targets=dict(cfg.targets),
        elapsed_s=round(time.monotonic() - started, 1),
        ingest_caught_up_s=settled.ingest_s,
        drained_s=settled.drained_s,
        memory_baseline=baseline,
        memory_after=got.memory_after,
        memory_growth=unexplained_growth(baseline, got.memory_after),
        memory_margin=cfg.memory_margin_bytes,
        leftover_keys=got.leftover,
        stats=got.stats,
        violation_counts=dict(bad.counts),
        violations=bad.listed,
    )


def _fleet_checks(
    cfg: ChaosConfig, got: Collected, fleet: Fleet, settled: Settled, baseline: dict[str, int], uploads: Uploads, bad: Violations
) -> None:
    if settled.ingest_s is None or settled.drained_s is None:
        bad.add("did not settle", settled.remaining)
    created = got.stats.get("batches_created", 0)
    if created != len(uploads.bodies) + len(got.dead):
        bad.add("batches created vs uploaded", f"{created} created, {len(uploads.bodies)} uploaded, {len(got.dead)} dead")
    growth = unexplained_growth(baseline, got.memory_after)
    if growth > cfg.memory_margin_bytes:
        bad.add(
            "memory not back near baseline",
            f"{growth:+,} B beyond client buffers and retained indexes "
            f"(used_memory {baseline.get('used_memory', 0):,} -> {got.memory_after.get('used_memory', 0):,} B)",
        )
    for kind, n in got.leftover.items():
        bad.add("leftover keys", f"{n} {kind} key(s) after retention")
    if cfg.strict:
        for exit_ in fleet.unexpected_exits:
            bad.add("role exited without a kill", exit_)


def _fault_checks(cfg: ChaosConfig, fleet: Fleet, faults: Faults, bad: Violations) -> None:
    for problem in faults.problems:
        bad.add("redis fault went wrong", problem)
    have = {"kills": sum(fleet.kills.values()), "redis_restarts": faults.redis_restarts, "failovers": faults.failovers}
    for name, want in cfg.targets.items():
        if have.get(name, 0) < want:
            bad.add("target not reached", f"{name}: {have.get(name, 0)} < {want}")


# -- the run ------------------------------------------------------------------------------------
def _default_workdir() -> Path:
    return Path(".batchfleet") / time.strftime("chaos-%Y%m%d-%H%M%S")


def _stderr(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def _chaos_window(
    store: BatchStore,
    fleet: Fleet,
    redis: RedisTopology,
    producer: Producer,
    cfg: ChaosConfig,
    faults: Faults,
    say: Callable[[str], None],
) -> None:
    end_at = time.monotonic() + cfg.duration_s
    await producer.start()
    try:
        await asyncio.gather(
            producer.run(end_at),
            chaos_loop(fleet, redis, cfg, end_at, faults, say),
            _progress(store, producer, fleet, faults, end_at, cfg, say),
        )
    finally:
        await producer.stop()


async def _run(cfg: ChaosConfig, workdir: Path, redis: RedisTopology, bootstrap: str, say: Callable[[str], None]) -> ChaosReport:
    started = time.monotonic()
    tag = f"{os.getpid()}-{int(time.time() * 1000) % 10**9}"
    rt_topic, poll_topic = f"CHAOS-RT-{tag}", f"CHAOS-POLL-{tag}"
    await create_topics(bootstrap, [rt_topic], partitions=2)
    await create_topics(bootstrap, [poll_topic], partitions=3)
    _write_topic_config(workdir / "topics.toml", rt_topic, poll_topic, cfg)
    settings = chaos_settings(redis.options(cfg), bootstrap, [rt_topic, poll_topic], workdir, f"chaos-{tag}", cfg)
    fleet = Fleet(role_env(settings), workdir, cfg)
    store = BatchStore.from_settings(settings, name="batchfleet-chaos")
    supervisor: asyncio.Task[None] | None = None
    try:
        fleet.start_all()
        if not await _wait_for_fleet(store, cfg):
            raise RuntimeError(f"the fleet did not start: see the role logs in {workdir}")
        await asyncio.sleep(1.0)
        baseline = await _memory(store)
        await _dump_memory(store, workdir / "memory-baseline.json")
        say(f"fleet up ({len(fleet.slots)} processes), redis memory baseline {baseline}; chaos for {cfg.duration_s:.0f}s")
        supervisor = asyncio.create_task(fleet.supervise())
        faults = Faults()
        producer = Producer(bootstrap, rt_topic, poll_topic, cfg)
        await _chaos_window(store, fleet, redis, producer, cfg, faults, say)
        say(f"producer stopped after {len(producer.messages)} messages; waiting for the fleet to settle")
        settled = await _settle(store, producer.end_offsets(), cfg)
        say(f"settled (ingest {settled.ingest_s}s, drained {settled.drained_s}s); waiting retention {cfg.retention_s}s + 3s")
        await asyncio.sleep(cfg.retention_s + 3)
        got = await _collect(store)
        await _patiently(lambda: _dump_memory(store, workdir / "memory-after.json"))
    finally:
        if supervisor is not None:
            supervisor.cancel()
        await asyncio.to_thread(fleet.stop)
        await store.aclose()
    uploads = workdir / "uploads.jsonl"
    raw = uploads.read_bytes() if uploads.exists() else b""
    return build_report(cfg, workdir, producer.messages, raw, got, fleet, faults, settled, baseline, redis.describe(), started)


async def run_chaos(cfg: ChaosConfig) -> ChaosReport:
    """The whole chaos run: local stack, fleet, producer and faults for ``cfg.duration_s``, then the audit."""
    say = cfg.log or _stderr
    workdir = (cfg.workdir or _default_workdir()).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    broker: KafkaBroker | None = None
    redis: RedisTopology | None = None
    try:
        bootstrap = cfg.bootstrap
        if bootstrap is None:
            broker = await asyncio.to_thread(KafkaBroker(log_path=workdir / "broker.log").start)
            bootstrap = broker.bootstrap
        if cfg.sentinel:
            redis = await asyncio.to_thread(SentinelRedis, workdir, cfg.replicas)
        else:
            redis = await asyncio.to_thread(SingleRedis, workdir)
        say(f"work directory {workdir}; {redis.describe()}; kafka {bootstrap}")
        return await _run(cfg, workdir, redis, bootstrap, say)
    finally:
        if redis is not None:
            await asyncio.to_thread(redis.stop)
        if broker is not None:
            await asyncio.to_thread(broker.stop)


def _start_redis(directory: Path, attempts: int = 3) -> RedisServer:
    """redis-server with AOF on a free port; another port when someone else took the chosen one first."""
    for attempt in range(attempts):
        redis = RedisServer(directory=directory, appendonly=True)
        try:
            return redis.start()
        except (RuntimeError, TimeoutError):
            redis.kill()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


SOAK_TARGETS = {"kills": 1000, "redis_restarts": 10, "failovers": 5}


def soak_config(minutes: float, seed: int, workdir: Path | None) -> ChaosConfig:
    """``--soak``: the Sentinel topology, a SIGKILL every 1-3 s, 18 Redis faults (6 primary kills, 6
    SENTINEL FAILOVERs, 5 replica kills, then the primary lost for good: 11 restarts, 13 failovers) and
    the targets as violations."""
    return ChaosConfig(
        duration_s=minutes * 60,
        seed=seed,
        workdir=workdir,
        sentinel=True,
        kill_every_s=(1.0, 3.0),
        restart_after_s=(0.3, 0.8),
        redis_events=18,
        lose_primary=True,
        settle_timeout_s=300.0,
        progress_every_s=60.0,
        strict=True,
        targets=dict(SOAK_TARGETS),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None, help="length of the chaos window (default 10; --soak 50)")
    parser.add_argument("--sentinel", action="store_true", help="a primary, 2 replicas and 3 Sentinels instead of one redis")
    parser.add_argument(
        "--soak",
        action="store_true",
        help="the soak: --sentinel, kills every 1-3 s, 18 Redis faults, >= 1,000 kills / 10 restarts / 5 failovers required",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for the producer and the kill schedule")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    parser.add_argument("--workdir", type=Path, default=None, help="logs, redis AOF and uploads (default .batchfleet/chaos-*)")
    parser.add_argument("--strict", action="store_true", help="a role process that exits by itself (not killed) fails the run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: stop the fleet and the stack first
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 100_000)
    if args.soak:
        cfg = soak_config(args.minutes or 50.0, seed, args.workdir)
    else:
        minutes = args.minutes or 10.0
        cfg = ChaosConfig(duration_s=minutes * 60, seed=seed, workdir=args.workdir, strict=args.strict, sentinel=args.sentinel)
    _stderr(f"seed {seed}")
    try:
        report = asyncio.run(run_chaos(cfg))
    except KeyboardInterrupt:
        _stderr("interrupted: the fleet and the local stack were stopped; no audit")
        return 130
    print(report.to_json().decode() if args.json else report.table(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
