"""``batchfleet bench`` (``scripts/bench``): the whole pipeline on an embedded local stack, measured.

Every role runs as its own OS process (``python -m batchfleet ROLE``), exactly as in production, with
a no-op station processor (:func:`noop_processor`) and an uploader that only notes the time
(:func:`record_upload`).  Each measurement gets a fresh ``redis-server`` (so ``INFO commandstats``,
``used_memory`` and ``used_memory_peak`` belong to it alone) and its own Kafka topic on one shared
broker.  What is measured, and how:

- **throughput**, for 1 and 2 worker processes: stations pre-produced to Kafka as 100-station
  messages, then dispatcher, workers and aggregator run concurrently; the sustained rate is the slope
  of uploaded stations between 10 % and 90 % of the run.  The **raw-arq baseline** of the same run:
  the same number of no-op jobs enqueued with arq's own ``enqueue_job`` (JSON serializer), released
  at once (``RENAME`` of a staging queue) to the same number of plain arq worker processes built from
  the same worker settings (``batchfleet.workers.settings.worker_settings`` with the job function swapped for a
  no-op and batchfleet's start-up hooks removed); the rate is the slope of finished jobs.
- **dispatcher throughput**: dispatcher alone (no workers), stations dispatched per second from the
  batches' creation times; compared with sequential ``enqueue_job`` calls in the raw-arq runs.
- **Redis commands per station, per role**: ``INFO commandstats`` deltas while each role runs alone
  (dispatch into a staging queue; then one worker, started idle and released by renaming the staging
  queue, as the raw-arq baseline is; then the aggregator); these include the commands Lua scripts run.
  The commands each role *sends* (a script call counts once) come from a ``MONITOR`` tap, attributed
  per connection name, in a separate small run that runs plain arq under the same tap; PINGs,
  heartbeats and health checks are time-driven, so they are counted per second, apart, on both sides.
- **latency** at 20 % of the end-to-end throughput measured with 2 worker processes (without that run:
  the best one), with that worker count: Kafka
  produce -> upload of 100-station batches (split into produce -> batch created -> last station done),
  last station recorded -> upload, and deadline -> upload (10-station batches with a 1 s deadline whose
  jobs nobody serves); next to them the raw-arq floor: 100 jobs released at once to idle workers.
- **memory**: ``used_memory`` minus client buffers (Redis 7's per-command latency histograms switched
  off: a fixed cost per command name), per open station (queued) and per recorded station, beyond the
  input and result bytes it stores, with ~200-byte records; then back to baseline after a 2 s retention.
- **a 10,000-station batch** (one message): Kafka ack -> batch and jobs in Redis, -> upload, peak memory.
- **CPU seconds per 1,000 stations** of each role process (and redis-server) from ``/proc``: in the
  phased run (each role alone) and in the end-to-end run with the most worker processes (the targets).
- **the peer**: a Celery chord of the same no-op work (chords of 100 tasks, a callback per chord, Redis
  broker and result backend, a worker with 2 prefork children) on its own fresh redis-server, run from
  ``.venv-celery`` (created with Celery on first use); its members/s, worker and Redis CPU per 1,000 go
  in a side-by-side table with batchfleet's and raw arq's from the same run.

Timing figures are noisy on a shared 2-core machine; the targets are printed next to them, and the
load average at the start and end of the run under the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import click
import orjson
import redis.asyncio as aioredis

from batchfleet.keys import Keys
from batchfleet.models import BatchSpec, PartitionRange
from batchfleet.settings import Settings, load_settings
from batchfleet.store import STATION_JOB, BatchStore
from batchfleet_dev import REPO
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics
from batchfleet_dev.procs import RoleProcess, role_env

__all__ = [
    "BenchConfig",
    "BenchContext",
    "Figure",
    "Report",
    "build_report",
    "measure_big_batch",
    "measure_commands",
    "measure_e2e",
    "measure_latency",
    "measure_raw_arq",
    "measure_roles",
    "noop_processor",
    "raw_noop_job",
    "record_upload",
    "run_bench",
]

UPLOAD_LOG_ENV = "BFBENCH_UPLOAD_LOG"  # where record_upload appends one line per uploaded batch
STATIONS_PER_BATCH = 100
QUEUE = Keys().queue(0)  # the one shard of the bench fleet
BENCH_CLIENT = "batchfleet-bench"
ENQUEUE_CLIENT = "bench-arq-enqueue"
_EXCLUDED_COMMANDS = ("info", "client|", "config|", "command|", "hello", "echo")
_KEYS = Keys()
T = TypeVar("T")


# =============================================================================================
# What the role processes load: the no-op processor, the timing uploader, the plain arq worker
# =============================================================================================
async def noop_processor(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's station processor: no work; the result carries the time it finished."""
    return {"stationId": station_id, "t": time.time()}


async def raw_noop_job(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> None:
    """The raw-arq baseline's job: no work."""
    return None


_upload_fd: list[int] = []


def record_upload(payload: dict[str, Any]) -> None:
    """The benchmark's uploader (``BATCHFLEET_UPLOADER=batchfleet_dev.bench:record_upload``): one JSON line
    per batch with the upload time and the time its last station finished."""
    now = time.time()
    if not _upload_fd:
        _upload_fd.append(os.open(os.environ[UPLOAD_LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    finished = [r["t"] for r in payload.get("results", ()) if isinstance(r, dict) and isinstance(r.get("t"), float)]
    summary = payload.get("summary", {})
    line = {
        "b": payload["batch_id"],
        "t": now,
        "reason": payload.get("reason"),
        "n": summary.get("expected", 0),
        "ok": summary.get("ok", 0),
        "last": max(finished) if finished else None,
        "created": payload.get("created_at"),
        "finalized": payload.get("finalized_at"),
    }
    os.write(_upload_fd[0], orjson.dumps(line) + b"\n")


def raw_worker_kwargs(settings: Settings, ready_file: str) -> dict[str, Any]:
    """batchfleet's arq worker settings with the job swapped for a no-op and no batchfleet hooks."""
    from arq.worker import func

    from batchfleet.workers.settings import worker_settings

    kwargs = worker_settings(settings)
    [station_fn] = [f for f in kwargs["functions"] if f.name == STATION_JOB]  # the raw jobs are enqueued under its name

    async def on_startup(ctx: dict[str, Any]) -> None:
        os.close(os.open(ready_file, os.O_WRONLY | os.O_CREAT, 0o644))

    kwargs["functions"] = [
        func(
            raw_noop_job,
            name=station_fn.name,
            max_tries=station_fn.max_tries,
            timeout=station_fn.timeout_s,
            keep_result=station_fn.keep_result_s,
        )
    ]
    kwargs["on_startup"] = on_startup
    kwargs["on_shutdown"] = None
    return kwargs


async def _serve_raw_worker(ready_file: str) -> None:
    from arq.worker import Worker

    worker = Worker(**raw_worker_kwargs(load_settings(), ready_file))
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass  # arq's SIGTERM handler cancels its main task: a normal shutdown
    finally:
        await worker.close()


# =============================================================================================
# Configuration, figures, report
# =============================================================================================
@dataclass
class BenchConfig:
    """Sizes of one benchmark run.  ``quick()`` is the CI size."""

    stations: int = 10_000  # per throughput run (and raw-arq jobs)
    worker_counts: tuple[int, ...] = (1, 2)
    roles_stations: int = 6_000  # the phased run: memory, dispatcher alone, CPU and commandstats per role
    record_bytes: int = 200  # input record size in the phased run
    command_stations: int = 2_000  # the MONITOR run
    latency_s: float = 25.0
    latency_load: float = 0.2  # fraction of the measured maximum throughput
    deadline_every_s: float = 0.25
    bursts: int = 10  # raw arq: 100-job bursts on idle workers (the floor of a 100-station batch's latency)
    big_batch: int = 10_000
    celery_members: int = 10_000  # the peer: Celery chords of 100 no-op tasks (0: leave the peer out)
    max_jobs: int = 50
    poll_delay_s: float = 0.05
    log_level: str = "INFO"
    retention_s: int = 2

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            stations=2_000,
            roles_stations=1_000,
            command_stations=500,
            latency_s=8.0,
            big_batch=2_000,
            bursts=4,
            celery_members=2_000,
        )


@dataclass
class Figure:
    key: str
    label: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None  # None: informational, no target

    def shown(self) -> str:
        v = self.value
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if self.unit == "bytes" and abs(v) >= 10_000:
            return f"{v / 1024:,.1f} KiB"
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else (2 if abs(v) >= 0.1 else 3))
        if self.unit == "cmds":
            digits = 3  # per-station differences of a few hundredths matter against "arq + 3"
        return f"{v:,.{digits}f} {self.unit}".rstrip()


@dataclass
class Peer:
    """One row of the side-by-side table: a system doing the same no-op work in the same run."""

    name: str
    per_s: float  # stations (members, jobs) per second
    worker_cpu_per_1000: float  # CPU seconds of the worker processes per 1,000
    redis_cpu_per_1000: float


@dataclass
class Report:
    config: BenchConfig
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    peers: list[Peer] = field(default_factory=list)
    load: dict[str, list[float]] = field(default_factory=dict)  # os.getloadavg() at start and end

    def add(self, key: str, label: str, value: float, unit: str, target: str = "", passed: bool | None = None) -> None:
        self.figures.append(Figure(key, label, value, unit, target, passed))

    def figure(self, key: str) -> Figure:
        for f in self.figures:
            if f.key == key:
                return f
        raise KeyError(key)

    def to_json(self) -> bytes:
        data = {
            "config": asdict(self.config),
            "elapsed_s": round(self.elapsed_s, 1),
            "figures": {
                f.key: {"label": f.label, "value": _finite(f.value), "unit": f.unit, "target": f.target, "pass": f.passed}
                for f in self.figures
            },
            "details": self.details,
            "peers": [asdict(p) | {"per_s": _finite(p.per_s)} for p in self.peers],
            "load": self.load,
        }
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)

    def table(self) -> str:
        rows = [("figure", "value", "target", "pass/fail")]
        for f in self.figures:
            verdict = "-" if f.passed is None else ("PASS" if f.passed else "FAIL")
            rows.append((f.label, f.shown(), f.target or "-", verdict))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        missed = [f.label for f in self.figures if f.passed is False]
        lines.append("")
        lines.append(
            f"{sum(f.passed is True for f in self.figures)} targets met, {len(missed)} missed"
            f" ({self.elapsed_s:.0f} s)" + (": " + "; ".join(missed) if missed else "")
        )
        if self.load:
            lines.append(
                f"load average (1/5/15 min) at start {_loads(self.load['start'])}, at end {_loads(self.load['end'])};"
                f" {os.cpu_count()} CPU(s)"
            )
        if self.peers:
            lines += ["", *self.peer_table()]
        return "\n".join(lines)

    def peer_table(self) -> list[str]:
        """The same no-op work on batchfleet, raw arq and Celery, from this run."""
        rows = [("side by side (same run, same machine)", "per second", "worker CPU s/1,000", "Redis CPU s/1,000")]
        for p in self.peers:
            rows.append((p.name, _shown(p.per_s, 0), _shown(p.worker_cpu_per_1000, 3), _shown(p.redis_cpu_per_1000, 3)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        out = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in rows
        ]
        out.insert(1, "  ".join("-" * w for w in widths))
        return out


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def _shown(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:,.{digits}f}"


def _finite(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def sustained_rate(samples: list[tuple[float, float]], total: float, lo: float = 0.1, hi: float = 0.9) -> float:
    """Items per second between the moments ``lo`` and ``hi`` of ``total`` were done.

    ``samples`` are (time, items done so far), in time order."""
    first: tuple[float, float] | None = None
    for t, done in samples:
        if first is None and done >= lo * total:
            first = (t, done)
        if first is not None and done >= hi * total and t > first[0]:
            return (done - first[1]) / (t - first[0])
    return math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc); NaN elsewhere."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# =============================================================================================
# Processes, Redis probes, Kafka helpers
# =============================================================================================
class Proc(RoleProcess):
    """A role process of the benchmark: its CPU time is read from /proc until it stops."""

    def __init__(self, role: str, args: list[str], env: dict[str, str], log_path: Path, ready_file: Path | None = None) -> None:
        super().__init__(role, env, log_path, args)
        self.ready_file = ready_file
        self.cpu_at_stop = math.nan
        self.stopping = False

    def cpu(self) -> float:
        value = cpu_seconds(self.pid)
        return self.cpu_at_stop if math.isnan(value) else value

    def check_alive(self) -> None:
        if not self.stopping and not self.alive():
            raise RuntimeError(f"{self.role} (pid {self.pid}) exited with {self.returncode}:\n{self.log_tail()}")

    def terminate(self) -> None:
        self.stopping = True
        if self.alive():
            self.cpu_at_stop = cpu_seconds(self.pid)
            self.signal(signal.SIGTERM)


class Probe:
    """The benchmark's own Redis connection (named ``batchfleet-bench``); counts what it sends so that
    commandstats deltas can leave it out."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(url, client_name=BENCH_CLIENT)
        self.sent: Counter[str] = Counter()

    async def cmd(self, *args: Any) -> Any:
        self.sent[str(args[0]).lower().replace(" ", "|")] += 1
        return await self.redis.execute_command(*args)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def commandstats(self) -> dict[str, int]:
        raw = await self.cmd("INFO", "commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in raw.items()}

    async def memory(self) -> dict[str, int]:
        raw = await self.cmd("INFO", "memory")
        return {k: int(v) for k, v in raw.items() if isinstance(v, int)}

    async def data_memory(self) -> int:
        """used_memory without client buffers: what the keys (and scripts) take."""
        m = await self.memory()
        return m["used_memory"] - m.get("mem_clients_normal", 0) - m.get("mem_clients_slaves", 0)

    async def stat(self, name: str) -> int:
        value = await self.cmd("HGET", _KEYS.stats(0), name)
        return int(value) if value is not None else 0

    async def recorded(self) -> int:
        values = await self.cmd("HMGET", _KEYS.stats(0), "stations_ok", "stations_empty", "stations_failed")
        return sum(int(v) for v in values if v is not None)

    async def members(self) -> set[tuple[str, int]]:
        """(role, pid) of every process with a heartbeat entry."""
        found: set[tuple[str, int]] = set()
        for raw in await self.cmd("ZRANGE", _KEYS.procs, 0, -1):
            role, _, rest = raw.decode().partition(":")
            found.add((role, int(rest.rpartition(":")[2])))
        return found


def command_delta(before: dict[str, int], after: dict[str, int], bench: Counter[str]) -> dict[str, int]:
    """Commands run between two commandstats snapshots, less the benchmark's own and admin commands."""
    delta: dict[str, int] = {}
    for name, calls in after.items():
        if name.startswith(_EXCLUDED_COMMANDS):
            continue
        n = calls - before.get(name, 0) - bench.get(name, 0)
        if n > 0:
            delta[name] = n
    return delta


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> list[tuple[int, float]]:
    """Produce all values to partition 0 as fast as the producer batches them: [(offset, ack time)]."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, linger_ms=2)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, partition=0) for v in values]
        metas = await asyncio.gather(*futures)
        return [(int(m.offset), time.time()) for m in metas]
    finally:
        await producer.stop()


def station_messages(count: int, per_message: int, record_bytes: int = 0, prefix: str = "S") -> list[bytes]:
    """``count`` stations as messages of ``per_message`` stations; records padded to ~``record_bytes``."""
    values: list[bytes] = []
    for start in range(0, count, per_message):
        n = min(per_message, count - start)
        records = [_record(f"{prefix}{i:04d}", start + i, record_bytes) for i in range(n)]
        values.append(orjson.dumps({"stationData": records}))
    return values


def _record(station_id: str, n: int, record_bytes: int) -> dict[str, Any]:
    record: dict[str, Any] = {"stationId": station_id, "ts": 1700000000.0 + n, "power_kw": round(50 + n % 900, 2)}
    if record_bytes:
        pad = record_bytes - len(orjson.dumps(record)) - len(',"pad":""')
        record["pad"] = "x" * max(pad, 0)
    return record


def read_uploads(path: Path) -> list[dict[str, Any]]:
    """The complete lines of the upload log (a line being written as we read is left for next time)."""
    if not path.exists():
        return []
    *complete, _partial = path.read_bytes().split(b"\n")
    return [orjson.loads(line) for line in complete if line.strip()]


# =============================================================================================
# One measurement's environment: fresh redis-server, topic, role processes
# =============================================================================================
@dataclass
class BenchContext:
    """What all measurements share: the Kafka broker, a work directory, the configuration."""

    broker: KafkaBroker
    workdir: Path
    config: BenchConfig
    progress: Callable[[str], None] = lambda message: None


class Run:
    """A fresh redis-server and topic; role processes spawned here are stopped (by PID) on exit."""

    def __init__(self, ctx: BenchContext, name: str, **env: str) -> None:
        self.ctx = ctx
        self.name = name
        self.dir = ctx.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        # topic names of one length (batch ids, job ids and so memory figures compare across runs)
        self.topic = f"STATION-DATA-{(os.getpid() * 7919 + time.time_ns() // 1000) % 16**8:08x}"
        self.uploads = self.dir / "uploads.jsonl"
        self.uploads.unlink(missing_ok=True)
        self.extra_env = env
        self.procs: list[Proc] = []
        self.server = RedisServer(directory=self.dir / "redis")
        self._probe: Probe | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def probe(self) -> Probe:
        if self._probe is None:
            raise RuntimeError("run not started")
        return self._probe

    async def __aenter__(self) -> Self:
        self.server.directory.mkdir(parents=True, exist_ok=True)
        self.server.start()
        self._probe = Probe(self.url)
        # Redis 7 keeps a latency histogram per command name, allocated on its first call (~10-30 KB
        # each): a fixed cost that would read as per-station memory.  Older servers have none.
        with contextlib.suppress(aioredis.ResponseError):
            await self._probe.cmd("CONFIG", "SET", "latency-tracking", "no")
        await create_topics(self.ctx.broker.bootstrap, [self.topic], partitions=1)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop(self.procs)
        await self.probe.aclose()
        self.server.stop()

    def env(self) -> dict[str, str]:
        cfg = self.ctx.config
        env = role_env()
        env.update(
            {
                "BATCHFLEET_REDIS_URL": self.url,
                "BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS": self.ctx.broker.bootstrap,
                "BATCHFLEET_TOPICS": self.topic,
                "BATCHFLEET_KAFKA_GROUP_ID": f"g-{self.topic}",
                "BATCHFLEET_PROCESSOR": "batchfleet_dev.bench:noop_processor",
                "BATCHFLEET_UPLOADER": "batchfleet_dev.bench:record_upload",
                "BATCHFLEET_BATCHING": "message",
                "BATCHFLEET_BATCH_TIMEOUT_S": "120",
                "BATCHFLEET_RETENTION_S": str(cfg.retention_s),
                "BATCHFLEET_WORKER_MAX_JOBS": str(cfg.max_jobs),
                "BATCHFLEET_WORKER_POLL_DELAY_S": str(cfg.poll_delay_s),
                "BATCHFLEET_LOG_LEVEL": cfg.log_level,
                UPLOAD_LOG_ENV: str(self.uploads),
            }
        )
        env.update(self.extra_env)
        return env

    def spawn(self, role: str, count: int = 1, env: dict[str, str] | None = None) -> list[Proc]:
        new: list[Proc] = []
        for _ in range(count):
            index = sum(p.role == role for p in [*self.procs, *new])
            args = [sys.executable, "-m", "batchfleet", role]
            ready = None
            if role == "raw-worker":
                ready = self.dir / f"ready-{index}"
                args = [sys.executable, "-m", "batchfleet_dev.bench", "raw-worker", str(ready)]
            new.append(Proc(role, args, self.env() | (env or {}), self.dir / f"{role}-{index}.log", ready))
        self.procs += new
        return new

    def stop(self, procs: list[Proc]) -> None:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)

    async def wait_ready(self, procs: list[Proc], timeout_s: float = 60) -> None:
        """Until every process has a heartbeat (raw arq workers: their ready file)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for p in procs:
                p.check_alive()
            members = await self.probe.members()
            if all((p.role, p.pid) in members or (p.ready_file is not None and p.ready_file.exists()) for p in procs):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: processes not ready after {timeout_s}s")
            await asyncio.sleep(0.05)

    async def wait_uploads(self, stations: int, timeout_s: float, procs: list[Proc] | None = None) -> list[dict[str, Any]]:
        """Until the uploaded batches hold ``stations`` stations; returns the upload lines."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = read_uploads(self.uploads)
            if sum(int(line["n"]) for line in lines) >= stations:
                return lines
            for p in procs or self.procs:
                p.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: {sum(int(x['n']) for x in lines)}/{stations} stations uploaded after {timeout_s}s"
                )
            await asyncio.sleep(0.02)

    async def wait_until(self, check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.01) -> None:
        deadline = time.monotonic() + timeout_s
        while not await check():
            for p in self.procs:
                p.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: timed out after {timeout_s}s waiting for {what}")
            await asyncio.sleep(every_s)

    def redis_cpu(self) -> float:
        return cpu_seconds(self.server.proc.pid) if self.server.proc is not None else math.nan

    def cpu(self, procs: Iterable[Proc]) -> dict[str, float]:
        by_role: dict[str, float] = {}
        for p in procs:
            by_role[p.role] = by_role.get(p.role, 0.0) + p.cpu()
        if self.server.proc is not None:
            by_role["redis"] = cpu_seconds(self.server.proc.pid)
        return by_role


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before.get(role, 0.0) for role in after}


def _upload_timeout(stations: int) -> float:
    return 60 + stations / 100


# =============================================================================================
# Measurements
# =============================================================================================
@dataclass
class RawArqResult:
    workers: int
    jobs: int
    enqueue_per_s: float
    enqueue_commands_per_job: float
    queued_bytes_per_job: float  # data memory of one queued arq job (job key + queue member)
    jobs_per_s: float
    worker_commands_per_job: float
    worker_commands: dict[str, int]
    cpu_s: dict[str, float]
    burst_ms: list[float]  # 100 jobs released at once to idle workers -> all done


async def _enqueue_raw(url: str, jobs: int, queue: str, topic: str) -> float:
    """Sequential arq ``enqueue_job`` calls (JSON serializer; job ids and arguments shaped like a
    station job's, ``{TOPIC:0:OFFSET}:STATION``); returns seconds."""
    from arq.connections import ArqRedis
    from redis.asyncio import ConnectionPool

    from batchfleet.workers.settings import json_dumps, json_loads

    pool = ArqRedis(
        ConnectionPool.from_url(url, client_name=ENQUEUE_CLIENT),
        job_serializer=json_dumps,
        job_deserializer=json_loads,
        default_queue_name=queue,
    )
    try:
        started = time.perf_counter()
        for i in range(jobs):
            batch = f"{topic}:0:{i // STATIONS_PER_BATCH}"
            station = f"S{i % STATIONS_PER_BATCH:04d}"
            await pool.enqueue_job(STATION_JOB, batch, station, _job_id=f"{{{batch}}}:{station}")
        return time.perf_counter() - started
    finally:
        await pool.aclose(close_connection_pool=True)  # a pool passed in is not closed by default


async def _drain(run: Run, jobs: int) -> list[tuple[float, float]]:
    """Sample the queue until it is empty: [(time, jobs finished)]."""
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + _upload_timeout(jobs)
    while True:
        left = int(await run.probe.cmd("ZCARD", QUEUE))
        samples.append((time.perf_counter(), jobs - left))
        if left == 0:
            return samples
        if time.monotonic() > deadline:
            raise TimeoutError(f"raw arq: {left} jobs left")
        await asyncio.sleep(0.01)


async def measure_raw_arq(ctx: BenchContext, jobs: int, workers: int) -> RawArqResult:
    """Plain arq: ``jobs`` no-op jobs via ``enqueue_job``, drained by ``workers`` arq worker processes."""
    async with Run(ctx, f"raw-arq-w{workers}") as run:
        probe = run.probe
        cs0, sent0, mem0 = await probe.commandstats(), Counter(probe.sent), await probe.data_memory()
        enqueue_s = await _enqueue_raw(run.url, jobs, STAGING, run.topic)
        cs1, mem1 = await probe.commandstats(), await probe.data_memory()
        enqueue_cmds = command_delta(cs0, cs1, probe.sent - sent0)
        procs = run.spawn("raw-worker", workers)
        await run.wait_ready(procs)
        cpu0 = run.cpu(procs)
        sent1 = Counter(probe.sent)
        cs2 = await probe.commandstats()
        await probe.cmd("RENAME", STAGING, QUEUE)  # every job becomes visible at once
        samples = await _drain(run, jobs)
        cpu1 = run.cpu(procs)
        worker_cmds = command_delta(cs2, await probe.commandstats(), probe.sent - sent1)
        bursts = [await _raw_burst(run) for _ in range(ctx.config.bursts)]
        return RawArqResult(
            workers=workers,
            jobs=jobs,
            enqueue_per_s=jobs / enqueue_s,
            enqueue_commands_per_job=sum(enqueue_cmds.values()) / jobs,
            queued_bytes_per_job=(mem1 - mem0) / jobs,
            jobs_per_s=sustained_rate(samples, jobs),
            worker_commands_per_job=sum(worker_cmds.values()) / jobs,
            worker_commands=worker_cmds,
            cpu_s=_cpu_delta(cpu0, cpu1),
            burst_ms=bursts,
        )


async def _raw_burst(run: Run) -> float:
    """Milliseconds from releasing 100 jobs to idle arq workers until all are done."""
    await asyncio.sleep(0.2)
    await _enqueue_raw(run.url, STATIONS_PER_BATCH, STAGING, run.topic)
    started = time.perf_counter()
    await run.probe.cmd("RENAME", STAGING, QUEUE)
    await run.wait_until(lambda: _queue_empty(run.probe), 60, "a 100-job burst", every_s=0.002)
    return (time.perf_counter() - started) * 1000


@dataclass
class E2EResult:
    workers: int
    stations: int
    stations_per_s: float
    wall_s: float
    cpu_s: dict[str, float]
    reasons: dict[str, int]


async def measure_e2e(ctx: BenchContext, stations: int, workers: int) -> E2EResult:
    """Kafka -> dispatcher -> ``workers`` workers -> aggregator -> upload, all at once, sustained rate."""
    async with Run(ctx, f"e2e-w{workers}") as run:
        await produce(ctx.broker.bootstrap, run.topic, station_messages(stations, STATIONS_PER_BATCH))
        procs = run.spawn("aggregator") + run.spawn("worker", workers) + run.spawn("dispatcher")
        # CPU from each role's first heartbeat: its imports and connections stay out of the figures (the
        # dispatcher beats before it joins the consumer group, so it has consumed nothing yet)
        await run.wait_ready(procs)
        cpu0 = run.cpu(procs)
        started = time.time()
        lines = await run.wait_uploads(stations, _upload_timeout(stations))
        cpu1 = run.cpu(procs)
        lines.sort(key=lambda line: float(line["t"]))
        samples, done = [], 0
        for line in lines:
            done += int(line["n"])
            samples.append((float(line["t"]), float(done)))
        reasons = Counter(str(line["reason"]) for line in lines)
        return E2EResult(
            workers, stations, sustained_rate(samples, stations), lines[-1]["t"] - started, _cpu_delta(cpu0, cpu1), dict(reasons)
        )


@dataclass
class Phase:
    """One role running alone (see :func:`_pipeline_phases`)."""

    commands: dict[str, int]  # commandstats delta, less the benchmark's own commands
    cpu_s: float  # the role process
    redis_cpu_s: float
    wall_s: float


@dataclass
class Phased:
    phases: dict[str, Phase]
    dispatch_per_s: float
    memory: dict[str, int]  # data memory (used_memory less client buffers) at each step


STAGING = QUEUE + ":staging"


async def _role_phase(
    run: Run,
    role: str,
    done: Callable[[], Awaitable[bool]],
    timeout_s: float,
    *,
    release: Callable[[], Awaitable[None]] | None = None,
    env: dict[str, str] | None = None,
) -> Phase:
    """Run ``role`` alone until ``done``.  With ``release``, the role first starts idle and ready, and the
    measurement covers only what ``release`` lets it do (its start-up stays out)."""
    probe = run.probe
    procs = run.spawn(role, 1, env)
    if release is not None:
        await run.wait_ready(procs)
    cs0, sent0, redis0 = await probe.commandstats(), Counter(probe.sent), run.redis_cpu()
    started = time.perf_counter()
    if release is not None:
        await release()
    else:
        await run.wait_ready(procs)  # CPU from here: without the interpreter's start-up and imports
    cpu0 = procs[0].cpu()
    await run.wait_until(done, timeout_s, f"{role} to finish")
    wall = time.perf_counter() - started
    cpu, redis_cpu = procs[0].cpu() - cpu0, run.redis_cpu() - redis0
    commands = command_delta(cs0, await probe.commandstats(), probe.sent - sent0)
    run.stop(procs)
    return Phase(commands, cpu, redis_cpu, wall)


async def _pipeline_phases(run: Run, stations: int, switch: Callable[[str], Awaitable[None]]) -> Phased:
    """The pipeline one role at a time, on messages already in Kafka: the dispatcher (no workers; its
    queue is then renamed to a staging key), then one worker (started idle; the staging queue is renamed
    back when it is ready, as in the raw-arq baseline), then the aggregator.  ``switch(name)`` is called before each."""
    probe = run.probe
    batches = math.ceil(stations / STATIONS_PER_BATCH)
    timeout = _upload_timeout(stations)
    memory = {"baseline": await probe.data_memory()}

    async def dispatched() -> bool:
        return await probe.stat("stations_dispatched") >= stations

    async def recorded() -> bool:
        return await probe.recorded() >= stations and await _queue_empty(probe)

    async def uploaded() -> bool:
        return await probe.stat("batches_uploaded") >= batches

    async def release() -> None:
        await switch("worker")
        await probe.cmd("RENAME", STAGING, QUEUE)

    await switch("dispatcher")
    phases = {"dispatcher": await _role_phase(run, "dispatcher", dispatched, timeout)}
    await probe.cmd("RENAME", QUEUE, STAGING)  # no worker has run yet: hide the jobs until one is ready
    dispatch_rate = await _dispatch_rate(run, stations)
    memory["open"] = await probe.data_memory()
    phases["worker"] = await _role_phase(run, "worker", recorded, timeout, release=release)
    memory["recorded"] = await probe.data_memory()
    await switch("aggregator")
    phases["aggregator"] = await _role_phase(run, "aggregator", uploaded, timeout)
    memory["uploaded"] = await probe.data_memory()
    await switch("end")
    return Phased(phases, dispatch_rate, memory)


async def _dispatch_rate(run: Run, stations: int) -> float:
    """Stations per second between the first and last batch's creation (Redis time)."""
    flat = await run.probe.cmd("ZRANGE", _KEYS.due(0), 0, -1, "WITHSCORES")
    scores = [int(float(s)) for s in flat[1::2]]
    if len(scores) < 2 or max(scores) == min(scores):
        return math.nan
    return (stations - STATIONS_PER_BATCH) / ((max(scores) - min(scores)) / 1000)


async def _queue_empty(probe: Probe) -> bool:
    return int(await probe.cmd("ZCARD", QUEUE)) == 0


@dataclass
class RolesResult:
    stations: int
    dispatch_per_s: float
    commands_per_station: dict[str, float]  # commandstats, including commands run by Lua scripts
    commands: dict[str, dict[str, int]]
    cpu_per_1000: dict[str, float]
    wall_s: dict[str, float]
    input_bytes_per_station: float
    result_bytes_per_station: float
    open_bytes_per_station: float  # beyond input
    recorded_bytes_per_station: float  # beyond result (a recorded station's input left with its arq job)
    open_breakdown: dict[str, float]  # bytes per open station by where they are
    baseline_bytes: int
    after_retention_bytes: int  # above baseline
    retention_wait_s: float


async def measure_roles(ctx: BenchContext, stations: int) -> RolesResult:
    """Each role alone, in pipeline order (dispatch, workers, aggregator), then retention: throughput of
    the dispatcher alone, commandstats and CPU per role, memory per open / recorded station."""
    cfg = ctx.config
    async with Run(ctx, "roles") as run:
        probe = run.probe
        values = station_messages(stations, STATIONS_PER_BATCH, cfg.record_bytes)
        input_bytes = sum(len(orjson.dumps([r])) for v in values for r in orjson.loads(v)["stationData"])
        result_bytes = len(orjson.dumps(await noop_processor("S0000", []))) * stations
        await produce(ctx.broker.bootstrap, run.topic, values)
        breakdown: dict[str, float] = {}

        async def switch(name: str) -> None:
            if name == "worker":  # the batches are open and their jobs queued: where do the bytes go?
                breakdown.update(await _open_breakdown(run, stations))

        phased = await _pipeline_phases(run, stations, switch)
        mem = phased.memory
        started = time.monotonic()
        residual = await _settle_memory(probe, mem["baseline"], cfg.retention_s + 15)
        p = phased.phases
        cpu = {role: ph.cpu_s for role, ph in p.items()} | {"redis": sum(ph.redis_cpu_s for ph in p.values())}
        return RolesResult(
            stations=stations,
            dispatch_per_s=phased.dispatch_per_s,
            commands_per_station={role: sum(ph.commands.values()) / stations for role, ph in p.items()},
            commands={role: ph.commands for role, ph in p.items()},
            cpu_per_1000={role: s * 1000 / stations for role, s in cpu.items()},
            wall_s={role: ph.wall_s for role, ph in p.items()},
            input_bytes_per_station=input_bytes / stations,
            result_bytes_per_station=result_bytes / stations,
            open_bytes_per_station=(mem["open"] - mem["baseline"] - input_bytes) / stations,
            recorded_bytes_per_station=(mem["recorded"] - mem["baseline"] - result_bytes) / stations,
            open_breakdown=breakdown,
            baseline_bytes=mem["baseline"],
            after_retention_bytes=residual,
            retention_wait_s=time.monotonic() - started,
        )


async def _open_breakdown(run: Run, stations: int) -> dict[str, float]:
    """Bytes per open station by key (``MEMORY USAGE``, every element), from the first batch."""
    probe = run.probe
    bid = f"{run.topic}:0:0"
    n = len(await probe.cmd("HKEYS", _KEYS.inputs(bid)))
    jobs = int(await probe.cmd("HGET", _KEYS.batch(bid), "jobs") or 0)
    inc = (await probe.cmd("HGET", _KEYS.batch(bid), "inc") or b"").decode()

    async def usage(key: str) -> int:
        return int(await probe.cmd("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)

    stats = await probe.cmd("MEMORY", "STATS")
    db = dict(zip(stats[::2], stats[1::2], strict=True)).get(b"db.0", [])
    dicts = dict(zip(db[::2], db[1::2], strict=True))
    return {
        "input_hash_field": await usage(_KEYS.inputs(bid)) / n,
        "arq_job_keys_with_records": sum([await usage(_KEYS.group_job(bid, i, inc)) for i in range(jobs)]) / n,
        "jobs_per_batch": jobs,
        "queue_member": await usage(STAGING) / stations,
        "meta_hash_share": await usage(_KEYS.batch(bid)) / n,
        "keyspace_dicts": (int(dicts.get(b"overhead.hashtable.main", 0)) + int(dicts.get(b"overhead.hashtable.expires", 0)))
        / stations,
        "batch_id_length": len(bid),
    }


async def _settle_memory(probe: Probe, baseline: int, timeout_s: float, tolerance: int = 64 * 1024) -> int:
    """Wait (up to ``timeout_s``) for the data memory to come back near ``baseline``; the excess left."""
    deadline = time.monotonic() + timeout_s
    while True:
        excess = await probe.data_memory() - baseline
        if excess <= tolerance or time.monotonic() > deadline:
            return excess
        await asyncio.sleep(0.1)


@dataclass
class CommandsResult:
    stations: int
    sent_per_station: dict[str, float]  # commands each role sends (a script call counts once)
    run_per_station: dict[str, float]  # ... plus the commands its scripts run
    arq_enqueue_per_job: float
    arq_worker_per_job: float
    worker_split: dict[str, float]  # per station: sent on batchfleet's own connection / on arq's pool
    housekeeping_per_s: dict[str, float]  # pings, heartbeats, health checks: per second, not per station
    by_command: dict[str, dict[str, int]]


_MONITOR_LINE = re.compile(rb'^\+?[\d.]+ \[\d+ ([^\]]+)\] "((?:[^"\\]|\\.)*)"(.*)$')
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def _housekeeping(command: str, rest: bytes) -> bool:
    """Time-driven commands, not per-job work: PINGs, batchfleet heartbeats (``bf:proc...``) and arq's
    health-check key.  Counted apart (per second), on both sides of the comparison."""
    if command == "ping":
        return True
    first = _QUOTED.search(rest)
    key = first.group(1) if first else b""
    return key.startswith((_KEYS.procs.encode(), _KEYS.proc("").encode())) or key.endswith(b":health-check")


class MonitorTap:
    """Counts every command Redis executes (``MONITOR``) per connection, splitting off the ones Lua
    scripts run (``[0 lua]``, attributed to the connection that called the script).  Phases are switched
    by ``ECHO bench-phase:NAME`` sent on the probe connection, so their boundaries are exact."""

    def __init__(self) -> None:
        self.names: dict[bytes, str] = {}
        self.counts: Counter[tuple[str, bytes, str, str]] = Counter()  # (phase, addr, "sent"|"lua", command)
        self.phase = "start"
        self._last_script_addr = b"?"
        self._seen_phases: set[str] = set()
        self.started: dict[str, float] = {}  # phase -> when the tap saw it begin (perf_counter)
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self, port: int, probe: Probe) -> None:
        """Tap the server on ``port``; names of connections already open come from ``CLIENT LIST``."""
        for client in await probe.cmd("CLIENT LIST"):
            if client.get("name"):
                self.names[str(client["addr"]).encode()] = str(client["name"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        if not (await reader.readline()).startswith(b"+OK"):
            raise RuntimeError("MONITOR refused")
        self._writer = writer
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await reader.read(1 << 20):
            lines = (pending + chunk).split(b"\r\n")
            pending = lines.pop()
            for line in lines:
                self._line(line)

    def _line(self, line: bytes) -> None:
        m = _MONITOR_LINE.match(line)
        if m is None:
            return
        addr, command, rest = m.group(1), m.group(2).decode().lower(), m.group(3)
        if addr == b"lua":
            self.counts[(self.phase, self._last_script_addr, "lua", command)] += 1
            return
        if command in ("evalsha", "eval", "fcall"):
            self._last_script_addr = addr
        elif command in ("client", "echo"):
            self._control(addr, command, [a.decode(errors="replace") for a in _QUOTED.findall(rest)])
            return  # connection set-up and the benchmark's own markers: not work
        kind = "housekeeping" if _housekeeping(command, rest) else "sent"
        self.counts[(self.phase, addr, kind, command)] += 1

    def _control(self, addr: bytes, command: str, args: list[str]) -> None:
        if command == "client" and len(args) >= 2 and args[0].lower() == "setname":
            self.names[addr] = args[1]
        elif command == "echo" and args and args[0].startswith("bench-phase:"):
            self.phase = args[0].removeprefix("bench-phase:")
            self._seen_phases.add(self.phase)
            self.started[self.phase] = time.perf_counter()

    async def switch(self, probe: Probe, phase: str, timeout_s: float = 30) -> None:
        """Start counting under ``phase`` (returns once the tap has read the switch)."""
        await probe.cmd("ECHO", f"bench-phase:{phase}")
        deadline = time.monotonic() + timeout_s
        while phase not in self._seen_phases:
            if time.monotonic() > deadline:
                raise TimeoutError(f"MONITOR tap did not see phase {phase}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task

    def tally(self, phase: str, roles: dict[str, str]) -> dict[tuple[str, str], Counter[str]]:
        """(role, "sent"|"lua") -> command counts in ``phase``; ``roles`` maps connection names to roles."""
        out: dict[tuple[str, str], Counter[str]] = {}
        for (ph, addr, kind, command), n in self.counts.items():
            if ph != phase:
                continue
            role = roles.get(self.names.get(addr, ""), "other")
            out.setdefault((role, kind), Counter())[command] += n
        return out


async def measure_commands(ctx: BenchContext, stations: int) -> CommandsResult:
    """Commands each role sends per station, from a MONITOR tap: plain arq first, then the batchfleet
    roles one at a time exactly as in :func:`measure_roles`, each attributed by connection name."""
    async with Run(ctx, "commands") as run:
        probe = run.probe
        tap = MonitorTap()
        await tap.start(run.server.port, probe)
        try:
            await produce(ctx.broker.bootstrap, run.topic, station_messages(stations, STATIONS_PER_BATCH))
            await tap.switch(probe, "arq-enqueue")
            await _enqueue_raw(run.url, stations, STAGING, run.topic)
            procs = run.spawn("raw-worker", 1)
            await run.wait_ready(procs)
            await tap.switch(probe, "arq-worker")
            await probe.cmd("RENAME", STAGING, QUEUE)
            await run.wait_until(lambda: _queue_empty(probe), _upload_timeout(stations), "the arq queue to drain")
            run.stop(procs)
            await tap.switch(probe, "idle")
            await _pipeline_phases(run, stations, lambda name: tap.switch(probe, name))
        finally:
            await tap.close()
    arq_names = {ENQUEUE_CLIENT: "arq", "": "arq"}  # arq's own pools are unnamed
    bf_names = {
        "batchfleet-dispatcher": "batchfleet",
        "batchfleet-worker": "batchfleet",
        "batchfleet-worker-arq": "batchfleet",  # the arq pool a batchfleet worker opens for each arq worker
        "batchfleet-aggregator": "batchfleet",
    }
    counted = {
        phase: tap.tally(phase, arq_names if phase.startswith("arq") else bf_names)
        for phase in ("arq-enqueue", "arq-worker", "dispatcher", "worker", "aggregator")
    }

    def total(phase: str, owner: str, kind: str) -> float:
        return sum(counted[phase].get((owner, kind), Counter()).values()) / stations

    roles = ("dispatcher", "worker", "aggregator")
    sent = {r: total(r, "batchfleet", "sent") for r in roles}
    own = tap.tally("worker", {"batchfleet-worker": "own", "batchfleet-worker-arq": "arq-pool"})
    split = {who: sum(own.get((who, "sent"), Counter()).values()) / stations for who in ("own", "arq-pool")}
    order = sorted(tap.started, key=tap.started.__getitem__)
    seconds = {a: tap.started[b] - tap.started[a] for a, b in itertools.pairwise(order)}
    housekeeping = {
        phase: total(phase, "arq" if phase.startswith("arq") else "batchfleet", "housekeeping") * stations / seconds[phase]
        for phase in counted
        if seconds.get(phase)
    }
    by_command = {f"{phase}:{kind}": dict(c) for phase, t in counted.items() for (owner, kind), c in t.items() if owner != "other"}
    return CommandsResult(
        stations=stations,
        sent_per_station=sent,
        run_per_station={r: sent[r] + total(r, "batchfleet", "lua") for r in roles},
        arq_enqueue_per_job=total("arq-enqueue", "arq", "sent"),
        arq_worker_per_job=total("arq-worker", "arq", "sent"),
        worker_split=split,
        housekeeping_per_s=housekeeping,
        by_command=by_command,
    )


@dataclass
class LatencyResult:
    workers: int
    load_stations_per_s: float
    batches: int
    produce_to_upload_ms: list[float]
    complete_to_upload_ms: list[float]
    deadline_to_upload_ms: list[float]
    produce_to_created_ms: list[float]
    created_to_complete_ms: list[float]


async def _produce_paced(bootstrap: str, topic: str, value: bytes, every_s: float, until: float, sent: dict[int, float]) -> None:
    """One message every ``every_s`` seconds until ``until`` (monotonic); offset -> send time."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        next_at = time.monotonic()
        while next_at < until:
            await asyncio.sleep(max(next_at - time.monotonic(), 0))
            t = time.time()
            meta = await producer.send_and_wait(topic, value, partition=0)
            sent[int(meta.offset)] = t
            next_at += every_s
    finally:
        await producer.stop()


async def _deadline_batches(url: str, every_s: float, until: float, deadlines: dict[str, float]) -> None:
    """Batches of 10 stations with a 1 s deadline whose jobs are taken off the queue before a worker sees them."""
    async with BatchStore.from_url(url, name="batchfleet-bench") as store:
        n = 0
        next_at = time.monotonic()
        while next_at < until:
            await asyncio.sleep(max(next_at - time.monotonic(), 0))
            bid = f"BENCH-DEADLINE:0:{n}"
            spec = BatchSpec(
                batch_id=bid,
                topic="BENCH-DEADLINE",
                stations={f"D{j:02d}": [{"stationId": f"D{j:02d}"}] for j in range(10)},
                ranges=[PartitionRange("BENCH-DEADLINE", 0, n, n + 1)],
                timeout_s=1.0,
                retention_s=2,
                messages=1,
            )
            _, created_ms = await store.create_batch(spec)
            await store.redis.zrem(QUEUE, store.keys.group_job_id(bid, 0, spec.incarnation))  # the batch is one group job
            deadlines[bid] = (created_ms + 1000) / 1000
            n += 1
            next_at += every_s


async def measure_latency(ctx: BenchContext, max_rate: float, duration_s: float, workers: int) -> LatencyResult:
    """100-station batches at ``latency_load`` x ``max_rate``, plus a stream of batches that hit their deadline."""
    cfg = ctx.config
    rate = max(cfg.latency_load * max_rate, 1.0)
    async with Run(ctx, "latency") as run:
        procs = run.spawn("aggregator") + run.spawn("worker", workers) + run.spawn("dispatcher")
        await run.wait_ready(procs)
        value = station_messages(STATIONS_PER_BATCH, STATIONS_PER_BATCH)[0]
        warm = await produce(ctx.broker.bootstrap, run.topic, [value] * 3)  # the consumer group has joined
        await run.wait_uploads(3 * STATIONS_PER_BATCH, 60)
        sent: dict[int, float] = {}
        deadlines: dict[str, float] = {}
        until = time.monotonic() + duration_s
        await asyncio.gather(
            _produce_paced(ctx.broker.bootstrap, run.topic, value, STATIONS_PER_BATCH / rate, until, sent),
            _deadline_batches(run.url, cfg.deadline_every_s, until, deadlines),
        )
        expected = (len(warm) + len(sent)) * STATIONS_PER_BATCH + 10 * len(deadlines)
        lines = await run.wait_uploads(expected, 60)
    return _latencies(run.topic, lines, sent, deadlines, LatencyResult(workers, rate, 0, [], [], [], [], []))


def _latencies(
    topic: str, lines: list[dict[str, Any]], sent: dict[int, float], deadlines: dict[str, float], result: LatencyResult
) -> LatencyResult:
    for line in lines:
        bid, t = str(line["b"]), float(line["t"])
        if bid in deadlines:
            result.deadline_to_upload_ms.append((t - deadlines[bid]) * 1000)
            continue
        offset = int(bid.rpartition(":")[2])
        if not bid.startswith(topic + ":") or offset not in sent:
            continue  # warm-up
        result.batches += 1
        result.produce_to_upload_ms.append((t - sent[offset]) * 1000)
        if line.get("last") is not None:
            result.complete_to_upload_ms.append((t - float(line["last"])) * 1000)
            result.created_to_complete_ms.append((float(line["last"]) - float(line["created"])) * 1000)
        result.produce_to_created_ms.append((float(line["created"]) - sent[offset]) * 1000)
    return result


@dataclass
class BigBatchResult:
    stations: int
    dispatch_s: float  # Kafka ack -> the batch and all its jobs are in Redis
    upload_s: float  # batch in Redis -> uploaded
    uploaded_ok: int
    reason: str
    peak_bytes: int  # used_memory_peak above the baseline
    baseline_bytes: int


async def measure_big_batch(ctx: BenchContext, stations: int, workers: int) -> BigBatchResult:
    """One message of ``stations`` stations (message batching: one batch) through the running fleet."""
    async with Run(ctx, "big-batch") as run:
        probe = run.probe
        procs = run.spawn("aggregator") + run.spawn("worker", workers) + run.spawn("dispatcher")
        await run.wait_ready(procs)
        await produce(ctx.broker.bootstrap, run.topic, station_messages(1, 1))  # warm-up: the group has joined
        await run.wait_uploads(1, 60)
        await probe.cmd("CONFIG", "RESETSTAT")  # resets used_memory_peak
        baseline = (await probe.memory())["used_memory"]
        value = station_messages(stations, stations, prefix="B")[0]
        ((offset, acked),) = await produce(ctx.broker.bootstrap, run.topic, [value])
        bid = f"{run.topic}:0:{offset}"
        await run.wait_until(lambda: _exists(probe, _KEYS.batch(bid)), 60, "the big batch")
        dispatched = time.time()
        lines = await run.wait_uploads(1 + stations, _upload_timeout(stations))
        line = next(x for x in lines if x["b"] == bid)
        peak = (await probe.memory())["used_memory_peak"]
        return BigBatchResult(
            stations,
            dispatched - acked,
            float(line["t"]) - dispatched,
            int(line["ok"]),
            str(line["reason"]),
            peak - baseline,
            baseline,
        )


async def _exists(probe: Probe, key: str) -> bool:
    return int(await probe.cmd("EXISTS", key)) == 1


# =============================================================================================
# The peer: a Celery chord of the same no-op work (its own virtual environment)
# =============================================================================================
CELERY_VENV = REPO / ".venv-celery"
CELERY_REQUIREMENT = "celery[redis]==5.6.3"
CELERY_CHILDREN = 2  # prefork pool processes, like the 2 worker processes of batchfleet and raw arq


def celery_python(progress: Callable[[str], None] = lambda message: None) -> Path:
    """The peer's interpreter: ``.venv-celery``, created with Celery installed on first use (its
    dependencies need not agree with arq's)."""
    python = CELERY_VENV / "bin" / "python"
    stamp = CELERY_VENV / ".bfbench-installed"
    if not (stamp.exists() and stamp.read_text() == CELERY_REQUIREMENT):
        progress(f"creating {CELERY_VENV.name} with {CELERY_REQUIREMENT} (first use)")
        subprocess.run([sys.executable, "-m", "venv", str(CELERY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", CELERY_REQUIREMENT], check=True)
        stamp.write_text(CELERY_REQUIREMENT)
    return python


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (Linux /proc)."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(tree_cpu_seconds(int(child)) for child in children)


@dataclass
class CeleryResult:
    chords: int
    size: int
    members_per_s: float
    wall_s: float
    cpu_s: dict[str, float]  # worker (parent + prefork children), producer, redis


async def measure_celery(ctx: BenchContext, members: int, size: int = STATIONS_PER_BATCH) -> CeleryResult:
    """``members`` no-op tasks as chords of ``size`` (a callback per chord), submitted at once to a Celery
    worker with ``CELERY_CHILDREN`` prefork children, Redis broker and backend on a fresh redis-server;
    the rate is the slope of finished chords' members, as for batchfleet's uploaded batches."""
    python = await asyncio.to_thread(celery_python, ctx.progress)
    chords = max(members // size, 1)
    async with Run(ctx, "celery") as run:
        env = role_env(extra={"BFBENCH_CELERY_REDIS": run.url})
        worker_args = [str(python), "-m", "celery", "-A", "batchfleet_dev.celery_peer", "worker", "--pool", "prefork"]
        worker_args += ["--concurrency", str(CELERY_CHILDREN), "--loglevel", "WARNING", "-n", "bfbench@%h"]
        worker_args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        worker = Proc("celery-worker", worker_args, env, run.dir / "celery-worker.log")
        run.procs.append(worker)
        await _celery_produce(run, python, env, 1, 2, "warm-up")  # the worker is up and consuming
        cpu0, redis0 = tree_cpu_seconds(worker.pid), run.redis_cpu()
        started = time.time()
        lines = await _celery_produce(run, python, env, chords, size, "chords")
        cpu = {"worker": tree_cpu_seconds(worker.pid) - cpu0, "redis": run.redis_cpu() - redis0}
    done = sorted(float(line["done"]) for line in lines if "done" in line)
    cpu["producer"] = next(float(line["cpu_s"]) for line in lines if "cpu_s" in line)
    samples = [(t, float((i + 1) * size)) for i, t in enumerate(done)]
    return CeleryResult(chords, size, sustained_rate(samples, chords * size), done[-1] - started, cpu)


async def _celery_produce(run: Run, python: Path, env: dict[str, str], chords: int, size: int, name: str) -> list[dict[str, Any]]:
    out = run.dir / f"celery-{name}.jsonl"
    args = [str(python), "-m", "batchfleet_dev.celery_peer", "produce", str(chords), str(size), str(out)]
    producer = Proc("celery-producer", args, env, run.dir / f"celery-{name}.log")
    run.procs.append(producer)
    deadline = time.monotonic() + _upload_timeout(chords * size)
    while (code := producer.returncode) is None:
        for p in run.procs:
            if p.role == "celery-worker":
                p.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"celery producer ({name}) still running after {_upload_timeout(chords * size)}s")
        await asyncio.sleep(0.05)
    if code != 0:
        raise RuntimeError(f"celery producer ({name}) exited with {code}:\n{producer.log_tail()}")
    return [orjson.loads(line) for line in out.read_bytes().splitlines() if line.strip()]


# =============================================================================================
# The whole benchmark
# =============================================================================================
@dataclass
class Results:
    raw: dict[int, RawArqResult] = field(default_factory=dict)
    e2e: dict[int, E2EResult] = field(default_factory=dict)
    roles: RolesResult | None = None
    commands: CommandsResult | None = None
    latency: LatencyResult | None = None
    big: BigBatchResult | None = None
    celery: CeleryResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each measurement


async def _timed(res: Results, name: str, step: Awaitable[T]) -> T:
    started = time.monotonic()
    try:
        return await step
    finally:
        res.seconds[name] = round(time.monotonic() - started, 1)


async def collect(ctx: BenchContext) -> Results:
    cfg = ctx.config
    res = Results()
    for w in cfg.worker_counts:
        ctx.progress(f"raw arq, {w} worker(s): {cfg.stations} jobs")
        res.raw[w] = await _timed(res, f"raw_arq_w{w}", measure_raw_arq(ctx, cfg.stations, w))
        ctx.progress(f"  {res.raw[w].jobs_per_s:,.0f} jobs/s; batchfleet end to end, {w} worker(s): {cfg.stations} stations")
        res.e2e[w] = await _timed(res, f"e2e_w{w}", measure_e2e(ctx, cfg.stations, w))
        ctx.progress(f"  {res.e2e[w].stations_per_s:,.0f} stations/s")
    if cfg.celery_members:
        ctx.progress(
            f"the peer: Celery chords of {STATIONS_PER_BATCH}, {CELERY_CHILDREN} prefork children: {cfg.celery_members} tasks"
        )
        res.celery = await _timed(res, "celery", measure_celery(ctx, cfg.celery_members))
        ctx.progress(f"  {res.celery.members_per_s:,.0f} members/s")
    ctx.progress(f"roles one at a time (dispatch, workers, aggregator, retention): {cfg.roles_stations} stations")
    res.roles = await _timed(res, "roles", measure_roles(ctx, cfg.roles_stations))
    ctx.progress(f"commands sent per role (MONITOR): {cfg.command_stations} stations")
    res.commands = await _timed(res, "commands", measure_commands(ctx, cfg.command_stations))
    # the targets are for 2 worker processes; without that run, the fleet at its fastest
    best = 2 if 2 in res.e2e else max(res.e2e, key=lambda w: _finite(res.e2e[w].stations_per_s) or 0.0)
    ctx.progress(
        f"latency at {cfg.latency_load:.0%} of {res.e2e[best].stations_per_s:,.0f} stations/s, {best} worker(s),"
        f" {cfg.latency_s:g} s"
    )
    res.latency = await _timed(res, "latency", measure_latency(ctx, res.e2e[best].stations_per_s, cfg.latency_s, best))
    ctx.progress(f"one {cfg.big_batch:,}-station batch, {best} worker(s)")
    res.big = await _timed(res, "big_batch", measure_big_batch(ctx, cfg.big_batch, best))
    return res


def _throughput_figures(report: Report, res: Results) -> None:
    for w, e2e in res.e2e.items():
        raw = res.raw[w]
        ratio = e2e.stations_per_s / raw.jobs_per_s
        rate = e2e.stations_per_s
        if w == 2:  # the target: 2 worker processes
            report.add(
                f"e2e_w{w}_stations_per_s", f"end-to-end throughput, {w} worker(s)", rate, "stations/s", ">= 5,000", rate >= 5000
            )
        else:
            report.add(f"e2e_w{w}_stations_per_s", f"end-to-end throughput, {w} worker(s)", rate, "stations/s")
        report.add(f"raw_arq_w{w}_jobs_per_s", f"raw-arq baseline, {w} worker(s)", raw.jobs_per_s, "jobs/s")
        report.add(f"e2e_w{w}_vs_raw_arq", f"end-to-end / raw arq, {w} worker(s)", ratio, "x", ">= 0.75", ratio >= 0.75)


def _dispatch_figures(report: Report, res: Results) -> None:
    assert res.roles is not None
    enqueue = max(r.enqueue_per_s for r in res.raw.values())
    ratio = res.roles.dispatch_per_s / enqueue
    report.add("dispatch_stations_per_s", "dispatcher throughput (alone)", res.roles.dispatch_per_s, "stations/s")
    report.add("raw_enqueue_jobs_per_s", "raw arq enqueue_job (sequential)", enqueue, "jobs/s")
    report.add("dispatch_vs_enqueue", "dispatcher / raw enqueue_job", ratio, "x", ">= 5", ratio >= 5)


def _command_figures(report: Report, res: Results) -> None:
    assert res.roles is not None and res.commands is not None
    c, roles = res.commands, res.roles
    w1 = res.raw[min(res.raw)]
    for role in ("dispatcher", "worker", "aggregator"):
        report.add(
            f"commands_{role}_per_station",
            f"Redis commands/station, {role} (commandstats, incl. Lua)",
            roles.commands_per_station[role],
            "cmds",
        )
    report.add(
        "arq_worker_commands_per_job", "Redis commands/job, raw arq worker (commandstats)", w1.worker_commands_per_job, "cmds"
    )
    report.add(
        "arq_enqueue_commands_per_job",
        "Redis commands/job, raw arq enqueue_job (commandstats)",
        w1.enqueue_commands_per_job,
        "cmds",
    )
    for role in ("dispatcher", "aggregator"):
        report.add(f"sent_{role}_per_station", f"commands sent/station, {role} (script call = 1)", c.sent_per_station[role], "cmds")
    report.add("sent_arq_worker_per_job", "commands sent/job, raw arq worker (same tap)", c.arq_worker_per_job, "cmds")
    limit = c.arq_worker_per_job + 3
    report.add(
        "sent_worker_per_station",
        "commands sent/station, worker (script call = 1)",
        c.sent_per_station["worker"],
        "cmds",
        f"<= arq + 3 = {limit:.3f}",
        c.sent_per_station["worker"] <= limit,
    )
    report.add("sent_worker_own_per_station", "  of which on batchfleet's own connection", c.worker_split["own"], "cmds")
    report.add(
        "sent_worker_arq_pool_per_station",
        "  of which on arq's pool (arq's run and finish of the job)",
        c.worker_split["arq-pool"],
        "cmds",
    )


def _latency_figures(report: Report, res: Results) -> None:
    lat = res.latency
    assert lat is not None
    rows = [
        ("produce_to_upload", "Kafka produce -> upload", lat.produce_to_upload_ms, 300.0),
        ("complete_to_upload", "last station recorded -> upload", lat.complete_to_upload_ms, 20.0),
        ("deadline_to_upload", "deadline -> upload", lat.deadline_to_upload_ms, 100.0),
    ]
    report.add(
        "latency_load_stations_per_s",
        f"latency run: load, 100-station batches, {lat.workers} worker(s)",
        lat.load_stations_per_s,
        "stations/s",
    )
    for key, label, values, limit in rows:
        p99 = percentile(values, 99)
        report.add(f"{key}_p50_ms", f"{label} p50 (n={len(values)})", percentile(values, 50), "ms")
        report.add(f"{key}_p99_ms", f"{label} p99", p99, "ms", f"<= {limit:g} ms", p99 <= limit)
    parts = [
        ("produce_to_created", "  of which Kafka produce -> batch created", lat.produce_to_created_ms),
        ("created_to_complete", "  of which batch created -> last station done", lat.created_to_complete_ms),
    ]
    for key, label, values in parts:
        report.add(f"{key}_p50_ms", f"{label} p50", percentile(values, 50), "ms")
        report.add(f"{key}_p99_ms", f"{label} p99", percentile(values, 99), "ms")
    raw = res.raw.get(lat.workers)
    if raw is not None:
        report.add(
            "raw_arq_burst_p50_ms",
            f"  raw arq floor: 100 jobs to {lat.workers} idle worker(s) -> done p50",
            percentile(raw.burst_ms, 50),
            "ms",
        )
        report.add(
            "raw_arq_burst_p99_ms",
            f"  raw arq floor: 100 jobs to {lat.workers} idle worker(s) -> done p99",
            percentile(raw.burst_ms, 99),
            "ms",
        )


def _memory_figures(report: Report, res: Results) -> None:
    roles = res.roles
    assert roles is not None
    report.add(
        "memory_open_station_bytes",
        "Redis memory/open station beyond input",
        roles.open_bytes_per_station,
        "bytes",
        "<= 300",
        roles.open_bytes_per_station <= 300,
    )
    report.add(
        "memory_recorded_station_bytes",
        "Redis memory/recorded station beyond result (input gone)",
        roles.recorded_bytes_per_station,
        "bytes",
        "<= 500",
        roles.recorded_bytes_per_station <= 500,
    )
    report.add("memory_input_bytes_per_station", "input payload/station (as stored)", roles.input_bytes_per_station, "bytes")
    if res.raw:
        queued = min(r.queued_bytes_per_job for r in res.raw.values())
        report.add("memory_raw_arq_job_bytes", "  raw arq: memory/queued job (same job id shape)", queued, "bytes")
    report.add(
        "memory_after_retention_bytes",
        "Redis memory after retention, above baseline",
        roles.after_retention_bytes,
        "bytes",
        "<= 64 KiB",
        roles.after_retention_bytes <= 64 * 1024,
    )


def _big_figures(report: Report, res: Results) -> None:
    big = res.big
    assert big is not None
    n = f"{big.stations:,}"
    report.add("big_dispatch_s", f"{n}-station batch: Kafka ack -> dispatched", big.dispatch_s, "s", "<= 2 s", big.dispatch_s <= 2)
    ok = big.uploaded_ok == big.stations and big.reason == "complete" and big.upload_s <= 2
    report.add("big_upload_s", f"{n}-station batch: dispatched -> uploaded", big.upload_s, "s", "<= 2 s, complete", ok)
    report.add("big_peak_memory_bytes", f"{n}-station batch: peak Redis memory above baseline", big.peak_bytes, "bytes")


_CPU_TARGETS = {"worker": 0.20, "redis": 0.04}  # CPU s per 1,000 stations, end to end with 2 worker processes


def _cpu_figures(report: Report, res: Results) -> None:
    roles = res.roles
    assert roles is not None
    for role in ("dispatcher", "worker", "aggregator", "redis"):
        report.add(
            f"cpu_{role}_per_1000",
            f"CPU s/1,000 stations, {role} (roles one at a time)",
            roles.cpu_per_1000.get(role, math.nan),
            "s",
        )
    w = max(res.e2e)
    e2e = res.e2e[w]
    for role in ("dispatcher", "worker", "aggregator", "redis"):
        value = e2e.cpu_s.get(role, math.nan) * 1000 / e2e.stations
        label = f"CPU s/1,000 stations, {role}, end to end with {w} worker(s)"
        limit = _CPU_TARGETS.get(role)
        if limit is not None and w == 2:
            report.add(f"e2e_cpu_{role}_per_1000", label, value, "s", f"<= {limit:.2f} s", value <= limit)
        else:
            report.add(f"e2e_cpu_{role}_per_1000", label, value, "s")


def _peer_figures(report: Report, res: Results) -> None:
    """The side-by-side rows: batchfleet end to end, raw arq, and the Celery chord."""
    for w, e2e in res.e2e.items():
        report.peers.append(
            Peer(
                f"batchfleet end to end, {w} worker process(es)",
                e2e.stations_per_s,
                e2e.cpu_s.get("worker", math.nan) * 1000 / e2e.stations,
                e2e.cpu_s.get("redis", math.nan) * 1000 / e2e.stations,
            )
        )
    for w, raw in res.raw.items():
        report.peers.append(
            Peer(
                f"raw arq no-op jobs, {w} worker process(es)",
                raw.jobs_per_s,
                raw.cpu_s.get("raw-worker", math.nan) * 1000 / raw.jobs,
                raw.cpu_s.get("redis", math.nan) * 1000 / raw.jobs,
            )
        )
    c = res.celery
    if c is None:
        return
    n = c.chords * c.size
    name = f"Celery chords of {c.size} no-op tasks, {CELERY_CHILDREN} prefork children"
    report.peers.append(Peer(name, c.members_per_s, c.cpu_s["worker"] * 1000 / n, c.cpu_s["redis"] * 1000 / n))
    report.add("celery_members_per_s", f"peer: {name}", c.members_per_s, "members/s")
    report.add(
        "celery_cpu_worker_per_1000",
        "peer: Celery worker CPU s/1,000 members (parent + children)",
        c.cpu_s["worker"] * 1000 / n,
        "s",
    )
    report.add("celery_cpu_redis_per_1000", "peer: Celery's Redis CPU s/1,000 members", c.cpu_s["redis"] * 1000 / n, "s")


def build_report(config: BenchConfig, res: Results, elapsed_s: float) -> Report:
    report = Report(config, elapsed_s=elapsed_s)
    _throughput_figures(report, res)
    _dispatch_figures(report, res)
    _command_figures(report, res)
    _latency_figures(report, res)
    _memory_figures(report, res)
    _big_figures(report, res)
    _cpu_figures(report, res)
    _peer_figures(report, res)
    report.details = {
        "raw_arq": {w: asdict(r) for w, r in res.raw.items()},
        "e2e": {w: asdict(r) for w, r in res.e2e.items()},
        "roles": asdict(res.roles) if res.roles else None,
        "commands": asdict(res.commands) if res.commands else None,
        "latency": _latency_details(res.latency),
        "big_batch": asdict(res.big) if res.big else None,
        "celery": asdict(res.celery) if res.celery else None,
        "seconds": res.seconds,
    }
    return report


def _latency_details(lat: LatencyResult | None) -> dict[str, Any] | None:
    if lat is None:
        return None
    out: dict[str, Any] = {"load_stations_per_s": lat.load_stations_per_s, "batches": lat.batches}
    for name in (
        "produce_to_upload_ms",
        "complete_to_upload_ms",
        "deadline_to_upload_ms",
        "produce_to_created_ms",
        "created_to_complete_ms",
    ):
        values: list[float] = getattr(lat, name)
        out[name] = {
            "n": len(values),
            "p50": _finite(percentile(values, 50)),
            "p90": _finite(percentile(values, 90)),
            "p99": _finite(percentile(values, 99)),
            "max": max(values) if values else None,
        }
    return out


@contextlib.asynccontextmanager
async def _context(
    config: BenchConfig, broker: KafkaBroker | None, workdir: Path | None, progress: Callable[[str], None]
) -> AsyncIterator[BenchContext]:
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="batchfleet-bench-")) if workdir is None else workdir
    own_broker = broker is None
    if broker is None:
        broker = KafkaBroker(log_path=root / "broker.log").start()
    try:
        yield BenchContext(broker, root, config, progress)
    finally:
        if own_broker:
            broker.stop()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


async def run_bench(
    config: BenchConfig,
    *,
    broker: KafkaBroker | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> Report:
    """Start what is missing of the local stack, run every measurement, build the report."""
    started = time.monotonic()
    load_start = list(os.getloadavg())  # the machine may be shared: the figures are read with it
    async with _context(config, broker, workdir, progress) as ctx:
        res = await collect(ctx)
    report = build_report(config, res, time.monotonic() - started)
    report.load = {"start": load_start, "end": list(os.getloadavg())}
    return report


def cli_main(
    *,
    quick: bool,
    as_json: bool,
    workers: str,
    stations: int | None,
    latency_s: float | None,
    keep: Path | None,
    strict: bool,
    peer: bool = True,
) -> int:
    """``batchfleet bench``: prints the table (or JSON); exit 1 with ``strict`` when a target is missed."""
    config = BenchConfig.quick() if quick else BenchConfig()
    if not peer:
        config.celery_members = 0
    config.worker_counts = tuple(sorted({int(w) for w in workers.split(",") if w.strip()}))
    if stations:
        config.stations = stations
    if latency_s:
        config.latency_s = latency_s

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run_bench(config, workdir=keep, progress=progress))
    if keep is not None:
        (keep / "report.json").write_bytes(report.to_json())
    if as_json:
        sys.stdout.write(report.to_json().decode() + "\n")
    else:
        print(report.table())
    return 1 if strict and any(f.passed is False for f in report.figures) else 0


@click.command()
@click.option("--quick", is_flag=True, help="CI-size run (smaller counts, shorter latency run)")
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON instead of the table")
@click.option("--workers", "worker_counts", default="1,2", show_default=True, help="worker process counts to measure")
@click.option("--stations", type=int, help="stations per throughput run (default 10000, --quick 2000)")
@click.option("--latency-seconds", "latency_s", type=float, help="length of the latency run (default 25, --quick 8)")
@click.option("--keep", type=click.Path(file_okay=False), help="keep logs and data in this directory")
@click.option("--strict", is_flag=True, help="exit 1 when a target is missed")
@click.option("--peer/--no-peer", default=True, show_default=True, help="run the Celery chord peer (.venv-celery on first use)")
def main(
    quick: bool,
    as_json: bool,
    worker_counts: str,
    stations: int | None,
    latency_s: float | None,
    keep: str | None,
    strict: bool,
    peer: bool,
) -> None:
    """Benchmark the whole pipeline on an embedded local stack against raw arq and a Celery chord (scripts/bench)."""
    from batchfleet.logs import configure_logging

    configure_logging("human", "WARNING", "bench")
    code = cli_main(
        quick=quick,
        as_json=as_json,
        workers=worker_counts,
        stations=stations,
        latency_s=latency_s,
        keep=Path(keep) if keep else None,
        strict=strict,
        peer=peer,
    )
    sys.exit(code)


def _raw_worker_main(ready_file: str) -> None:
    """The plain arq worker of the baseline: ``python -m batchfleet_dev.bench raw-worker READY_FILE``."""
    from batchfleet.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level, "raw-worker")
    asyncio.run(_serve_raw_worker(ready_file))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "raw-worker":
        _raw_worker_main(sys.argv[2])
    else:
        main()
