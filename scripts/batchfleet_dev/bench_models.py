"""``scripts/bench --models``: station models at full speed, every figure with its target, in one run.

On the embedded local stack (a fresh redis-server per run, the tansu broker, every role its own process,
batches of ``--per-batch`` stations, one per Kafka message):

- **CPU-bound pure Python** (``bench_model_fns.cpu_station``, calibrated here to ~5 ms of CPU a station),
  ``BATCHFLEET_WORKER_CONCURRENCY=1``, ``STATIONS_PER_JOB=20``: stations/s with one worker process, with
  one ``batchfleet worker --processes CORES`` and with two single-process workers (as on two hosts), each
  against the machine limit (cores / CPU seconds a station, the model's own thread CPU time measured in
  the same run; each rate is stations / (last upload - first message)); the share of the busier
  worker; the recorded station durations against the processor's own time (what waiting inside a
  worker would add).
- **The Celery peer**: the same function as chord members (one chord per batch), a prefork worker with
  CORES children (``celery_peer.py``, ``.venv-celery`` created on first use).
- **A numpy model** (``NumpyGroupModel`` / ``NumpyStationModel``: the same network) through group calls
  and per-station calls, end to end, and the model alone (µs a station, called one by one vs once for 100).
- **Memory per process with a 200 MB model**: ``batchfleet worker --processes 2`` (each child loads it in
  ``setup``), the same with the weights read by ``mmap`` from a .npy file, and a parent that preloaded it
  and forked 2 children (copy-on-write, as gunicorn's preload): PSS (the process's fair share of shared
  pages) and USS (pages only it holds) per child, from ``/proc/PID/smaps_rollup``.

The machine may be shared: the load average is printed with the figures.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from batchfleet.store import BatchStore
from batchfleet_dev import bench_model_fns as fns
from batchfleet_dev.bench import (
    BenchConfig,
    BenchContext,
    Proc,
    Report,
    Run,
    _context,
    celery_python,
    percentile,
    produce,
    station_messages,
    tree_cpu_seconds,
)
from batchfleet_dev.localstack import KafkaBroker
from batchfleet_dev.procs import role_env

__all__ = ["ModelsConfig", "main", "run_models_bench"]

CORES = os.cpu_count() or 1
CPU_TARGET_MS = 5.0
FNS = "batchfleet_dev.bench_model_fns"


@dataclass
class ModelsConfig:
    cpu_stations: int = 4_000
    numpy_stations: int = 20_000
    per_batch: int = 400
    cpu_per_job: int = 20
    numpy_per_job: int = 100
    peer: bool = True
    memory: bool = True

    @classmethod
    def quick(cls) -> ModelsConfig:
        return cls(cpu_stations=800, numpy_stations=2_000, per_batch=200)


@dataclass
class FleetResult:
    name: str
    stations: int
    per_s: float
    own_cpu_ms: float  # the model's mean thread CPU time a station
    by_worker: dict[str, int] = field(default_factory=dict)
    gap_ms: dict[str, float] = field(default_factory=dict)  # recorded duration - the processor's own wall time
    worker_cpu_s: float = 0.0
    wall_s: float = 0.0
    processes: int = 1
    busy: dict[str, dict[str, float]] = field(default_factory=dict)  # per worker process: its stations' timeline
    machine_busy_s: float = 0.0  # CPU seconds the whole machine spent during the run (/proc/stat)


def calibrate_loops(target_ms: float = CPU_TARGET_MS) -> int:
    """Loops of ``cpu_work`` that take ``target_ms`` of CPU on this machine (best of a few tries)."""
    loops = 20_000
    for _ in range(3):
        best = min(_cpu_ms(loops) for _ in range(5))
        loops = max(int(loops * target_ms / best), 1000)
    return loops


def _cpu_ms(loops: int) -> float:
    t0 = time.thread_time()
    fns.cpu_work(loops)
    return (time.thread_time() - t0) * 1000


async def _workers_beating(run: Run, n: int, procs: list[Proc]) -> list[int]:
    async def enough() -> bool:
        return sum(role == "worker" for role, _ in await run.probe.members()) >= n

    deadline = time.monotonic() + 120
    while not await enough():
        for p in procs:
            p.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.name}: {n} worker processes not beating after 120 s")
        await asyncio.sleep(0.1)
    return [pid for role, pid in await run.probe.members() if role == "worker"]


async def fleet_run(
    ctx: BenchContext, name: str, processor: str, stations: int, workers: list[list[str]], per_job: int, env: dict[str, str]
) -> FleetResult:
    """Dispatcher, aggregator and ``workers`` (each its extra ``batchfleet worker`` arguments); a warm-up
    batch, then every station at once; the rate is the slope of uploaded stations."""
    per_batch = int(env.get("BFBENCH_PER_BATCH", "400"))
    extra = {
        "BATCHFLEET_PROCESSOR": processor,
        "BATCHFLEET_STATIONS_PER_JOB": str(per_job),
        "BATCHFLEET_WORKER_CONCURRENCY": "1",
        "BATCHFLEET_RETENTION_S": "900",
        "BATCHFLEET_LOG_LEVEL": "WARNING",
        **{k: v for k, v in env.items() if k != "BFBENCH_PER_BATCH"},
    }
    async with Run(ctx, name, **extra) as run:
        run.spawn("dispatcher")
        run.spawn("aggregator")
        procs = [
            Proc("worker", [sys.executable, "-m", "batchfleet", "worker", *args], run.env(), run.dir / f"worker-{i}.log")
            for i, args in enumerate(workers)
        ]
        run.procs += procs
        processes = sum(int(a[a.index("--processes") + 1]) if "--processes" in a else 1 for a in workers)
        await _workers_beating(run, processes, run.procs)
        await produce(ctx.broker.bootstrap, run.topic, station_messages(per_batch, per_batch, prefix="W"))
        await run.wait_uploads(per_batch, 120)
        warm = len(await asyncio.to_thread(_uploads, run))
        cpu0 = sum(tree_cpu_seconds(p.pid) for p in procs)
        machine0 = machine_busy_s()
        started = time.time()
        await produce(ctx.broker.bootstrap, run.topic, station_messages(stations, per_batch))
        lines = await run.wait_uploads(stations + per_batch, 120 + stations / 50)
        worker_cpu = sum(tree_cpu_seconds(p.pid) for p in procs) - cpu0
        machine = machine_busy_s() - machine0
        measured = sorted(lines[warm:], key=lambda line: float(line["t"]))
        samples, done = [(started, 0.0)], 0.0
        for line in measured:
            done += int(line["n"])
            samples.append((float(line["t"]), done))
        wall = samples[-1][0] - started
        rate = stations / wall  # from the first message to the last upload (Celery's chords end together)
        result = FleetResult(name, stations, rate, 0.0, worker_cpu_s=worker_cpu, wall_s=wall, processes=processes)
        result.machine_busy_s = machine
        await _outcomes(run, [str(line["b"]) for line in measured], result)
    return result


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has used since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _uploads(run: Run) -> list[dict[str, Any]]:
    from batchfleet_dev.bench import read_uploads

    return read_uploads(run.uploads)


async def _outcomes(run: Run, batch_ids: list[str], result: FleetResult) -> None:
    """Who ran each station, and how its recorded duration compares with the processor's own time."""
    by_worker: Counter[str] = Counter()
    gaps: list[float] = []
    own: list[float] = []
    spans: dict[str, list[tuple[float, float]]] = {}
    async with BatchStore.from_url(run.url, name="bench") as store:
        for batch_id in batch_ids:
            for outcome in (await store.batch_outcomes(batch_id)).values():
                by_worker[outcome.worker] += 1
                r = outcome.result or {}
                if "wall_ms" in r:
                    gaps.append(outcome.duration_ms - float(r["wall_ms"]))
                    own.append(float(r["own_ms"]))
                    spans.setdefault(outcome.worker, []).append((float(r["t"]) - float(r["wall_ms"]) / 1000, float(r["t"])))
    result.by_worker = dict(by_worker)
    result.busy = {worker: _busy(iv) for worker, iv in spans.items()}
    result.own_cpu_ms = statistics.fmean(own) if own else float("nan")
    if gaps:
        result.gap_ms = {"p50": percentile(gaps, 50), "p99": percentile(gaps, 99), "max": max(gaps)}


def _busy(spans: list[tuple[float, float]]) -> dict[str, float]:
    """How a worker process spent the time from its first station's start to its last one's end: running
    stations, and the gaps between them (its runner idle, or waiting for the GIL)."""
    spans.sort()
    first, last = spans[0][0], max(end for _, end in spans)
    running = sum(end - start for start, end in spans)
    return {"span_s": last - first, "running_s": running, "first": first, "last": last}


# -- the Celery peer -------------------------------------------------------------------------------
async def celery_cpu_run(ctx: BenchContext, stations: int, size: int, loops: int) -> float:
    """The CPU-bound function as chord members (a chord per batch), CORES prefork children."""
    python = await asyncio.to_thread(celery_python, ctx.progress)
    chords = max(stations // size, 1)
    async with Run(ctx, "celery-cpu") as run:
        env = role_env(extra={"BFBENCH_CELERY_REDIS": run.url, "BFBENCH_CPU_LOOPS": str(loops)})
        args = [str(python), "-m", "celery", "-A", "batchfleet_dev.celery_peer", "worker", "--pool", "prefork"]
        args += ["--concurrency", str(CORES), "--loglevel", "WARNING", "-n", "bfmodels@%h"]
        args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        worker = Proc("celery-worker", args, env, run.dir / "celery-worker.log")
        run.procs.append(worker)
        await _celery_produce(run, python, env, 1, CORES * 2, "warm-up")
        started = time.time()
        lines = await _celery_produce(run, python, env, chords, size, "chords")
    done = max(float(line["done"]) for line in lines if "done" in line)
    return chords * size / (done - started)  # chords run interleaved and end together: no slope to take


async def _celery_produce(run: Run, python: Path, env: dict[str, str], chords: int, size: int, name: str) -> list[dict[str, Any]]:
    out = run.dir / f"celery-{name}.jsonl"
    args = [str(python), "-m", "batchfleet_dev.celery_peer", "produce", str(chords), str(size), str(out), "cpu"]
    producer = Proc("celery-producer", args, env, run.dir / f"celery-{name}.log")
    run.procs.append(producer)
    deadline = time.monotonic() + 120 + chords * size / 20
    while (code := producer.returncode) is None:
        run.procs[0].check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"celery producer ({name}) still running")
        await asyncio.sleep(0.05)
    if code != 0:
        raise RuntimeError(f"celery producer ({name}) exited with {code}:\n{producer.log_tail()}")
    return [orjson.loads(line) for line in out.read_bytes().splitlines() if line.strip()]


# -- the numpy model alone ---------------------------------------------------------------------------
_ALONE = (
    "import sys, time, json; from batchfleet_dev.bench_model_fns import cpu_work; loops, n = int(sys.argv[1]), int(sys.argv[2]);"
    " t, c = time.time(), time.thread_time(); [cpu_work(loops) for _ in range(n)];"
    " print(json.dumps([t, time.time(), (time.thread_time() - c) * 1000 / n]))"
)


def model_alone_on_every_core(loops: int, stations: int) -> tuple[float, float]:
    """The CPU-bound model alone, no fleet, in CORES processes at once: (stations/s, CPU ms a station).
    What the hardware gives when every core is busy: on a VM whose cores share the host's resources a
    station costs more CPU with every core busy than alone, so cores / (CPU a station alone) is a limit
    even the model by itself does not reach."""
    import subprocess

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(Path(fns.__file__).parents[1]), os.environ.get("PYTHONPATH")) if p),
    }
    procs = [
        subprocess.Popen([sys.executable, "-c", _ALONE, str(loops), str(stations)], stdout=subprocess.PIPE, env=env)
        for _ in range(CORES)
    ]
    got = [orjson.loads(proc.communicate(timeout=600)[0]) for proc in procs]
    wall = max(end for _, end, _ in got) - min(start for start, _, _ in got)
    return CORES * stations / wall, statistics.fmean(ms for _, _, ms in got)


def numpy_alone(stations: int = 2_000, group: int = 100) -> tuple[float, float]:
    """µs a station: ``process`` per station, and ``process_group`` once per ``group`` stations."""
    one, many = fns.NumpyStationModel(), fns.NumpyGroupModel()
    one.setup()
    many.setup()
    records = {f"S{i}": [{"power_kw": float(i)}] for i in range(stations)}
    t0 = time.perf_counter()
    for sid, recs in records.items():
        one.process(sid, recs)
    t1 = time.perf_counter()
    ids = list(records)
    for start in range(0, stations, group):
        many.process_group({sid: records[sid] for sid in ids[start : start + group]})
    t2 = time.perf_counter()
    return (t1 - t0) / stations * 1e6, (t2 - t1) / stations * 1e6


# -- memory ------------------------------------------------------------------------------------------
def smaps(pid: int) -> dict[str, float]:
    """Rss, Pss and USS (private clean + dirty) of a process, MiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0])
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"rss": fields.get("Rss", 0) / 1024, "pss": fields.get("Pss", 0) / 1024, "uss": uss / 1024}


async def memory_worker(ctx: BenchContext, name: str, env: dict[str, str]) -> list[dict[str, float]]:
    """``batchfleet worker --processes 2`` with the 200 MB model: smaps of each child once it beats."""
    extra = {"BATCHFLEET_PROCESSOR": f"{FNS}:BigModel", "BATCHFLEET_LOG_LEVEL": "WARNING", **env}
    async with Run(ctx, name, **extra) as run:
        sup = Proc("worker", [sys.executable, "-m", "batchfleet", "worker", "--processes", "2"], run.env(), run.dir / "sup.log")
        run.procs.append(sup)
        pids = await _workers_beating(run, 2, [sup])
        return [smaps(pid) for pid in pids]


async def memory_fork(ctx: BenchContext) -> list[dict[str, float]]:
    """A parent that set the 200 MB model up, then forked 2 children (copy-on-write)."""
    ready = ctx.workdir / "fork-ready"
    ready.mkdir(exist_ok=True)
    env = role_env()
    args = [sys.executable, "-m", "batchfleet_dev.bench_models", "fork-preload", str(ready)]
    parent = Proc("fork-parent", args, env, ctx.workdir / "fork-parent.log")
    try:
        deadline = time.monotonic() + 120
        while len(list(ready.iterdir())) < 2:
            parent.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("forked children not ready")
            await asyncio.sleep(0.1)
        return [smaps(int(p.name)) for p in ready.iterdir()]
    finally:
        parent.signal(signal.SIGTERM)
        parent.wait(20)


def _fork_preload_main(ready: str) -> None:
    """``python -m batchfleet_dev.bench_models fork-preload DIR``: set the model up, fork 2 children that
    each run a station and write DIR/PID; SIGTERM ends all."""
    import gc

    model = fns.BigModel()
    model.setup()
    gc.collect()
    gc.freeze()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait, here and in the children
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            model.process("S1", [])
            Path(ready, str(os.getpid())).touch()
            signal.sigwait({signal.SIGTERM})
            os._exit(0)
        children.append(pid)
    signal.sigwait({signal.SIGTERM})
    for pid in children:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


# -- the whole run -----------------------------------------------------------------------------------
@dataclass
class ModelsResults:
    loops: int = 0
    alone_all_cores: tuple[float, float] = (0.0, 0.0)  # the model alone in CORES processes: stations/s, CPU ms a station
    cpu: dict[str, FleetResult] = field(default_factory=dict)
    celery_per_s: float | None = None
    numpy: dict[str, FleetResult] = field(default_factory=dict)
    numpy_alone_us: tuple[float, float] = (0.0, 0.0)
    memory: dict[str, list[dict[str, float]]] = field(default_factory=dict)


async def collect(ctx: BenchContext, cfg: ModelsConfig) -> ModelsResults:
    res = ModelsResults(loops=calibrate_loops())
    ctx.progress(f"CPU-bound model: {res.loops} loops ~ {CPU_TARGET_MS} ms")
    res.alone_all_cores = await asyncio.to_thread(model_alone_on_every_core, res.loops, 200 if cfg.cpu_stations < 4_000 else 600)
    env = {"BFBENCH_CPU_LOOPS": str(res.loops), "BFBENCH_PER_BATCH": str(cfg.per_batch)}
    n = cfg.cpu_stations
    shapes: list[tuple[str, list[list[str]]]] = [
        ("one-process", [[]]),
        ("processes", [["--processes", str(CORES)]]),
        ("two-workers", [[], []]),
    ]
    for name, workers in shapes:
        ctx.progress(f"CPU-bound model, {name}: {n} stations")
        res.cpu[name] = await fleet_run(ctx, f"cpu-{name}", f"{FNS}:cpu_station", n, workers, cfg.cpu_per_job, env)
        ctx.progress(f"  {res.cpu[name].per_s:,.0f} stations/s")
    if cfg.peer:
        ctx.progress(f"Celery peer: the same function as chord members of {cfg.per_batch}, {CORES} prefork children")
        res.celery_per_s = await celery_cpu_run(ctx, n, cfg.per_batch, res.loops)
    res.numpy_alone_us = numpy_alone()
    numpy_env = {"BFBENCH_PER_BATCH": str(cfg.per_batch)}
    for name, model in (("group", "NumpyGroupModel"), ("station", "NumpyStationModel")):
        stations = cfg.numpy_stations if name == "group" else max(cfg.numpy_stations // 5, 2 * cfg.per_batch)
        ctx.progress(f"numpy model, {name} calls: {stations} stations")
        workers = [["--processes", str(CORES)]]
        res.numpy[name] = await fleet_run(ctx, f"numpy-{name}", f"{FNS}:{model}", stations, workers, cfg.numpy_per_job, numpy_env)
        ctx.progress(f"  {res.numpy[name].per_s:,.0f} stations/s")
    if cfg.memory:
        ctx.progress("memory: a 200 MB model, per child")
        res.memory["spawn"] = await memory_worker(ctx, "mem-spawn", {})
        weights = ctx.workdir / "weights.npy"
        await asyncio.to_thread(_save_weights, weights)
        res.memory["mmap"] = await memory_worker(ctx, "mem-mmap", {"BFBENCH_BIG_MODEL_FILE": str(weights)})
        res.memory["fork"] = await memory_fork(ctx)
    return res


def _save_weights(path: Path) -> None:
    import numpy as np

    np.save(path, np.full(fns.BIG_MODEL_MB * 1024 * 1024 // 8, 0.5))


def build_report(res: ModelsResults, elapsed_s: float) -> Report:
    report = Report(BenchConfig())
    one, procs, two = res.cpu["one-process"], res.cpu["processes"], res.cpu["two-workers"]
    cpu_ms = statistics.fmean([r.own_cpu_ms for r in res.cpu.values()])
    limit = CORES / (cpu_ms / 1000)
    report.add("cpu_station_ms", "CPU-bound model: CPU a station (its own thread time, this run)", cpu_ms, "ms")
    report.add("machine_limit", f"machine limit: {CORES} cores / CPU a station", limit, "stations/s")
    alone_per_s, alone_ms = res.alone_all_cores
    report.add("cpu_alone_all_cores", f"the model alone, no fleet, {CORES} processes at once", alone_per_s, "stations/s")
    report.add("cpu_alone_all_cores_ms", "  its CPU a station with every core busy", alone_ms, "ms")
    report.add("cpu_alone_all_cores_eff", "  of the machine limit", 100 * alone_per_s / limit, "%")
    report.add("cpu_one_process", "1 worker process", one.per_s, "stations/s")
    report.add("cpu_one_process_eff", "  of one core's limit", 100 * one.per_s / (limit / CORES), "%")
    report.add("cpu_processes", f"1 worker --processes {CORES}", procs.per_s, "stations/s")
    eff = 100 * procs.per_s / limit
    report.add("cpu_processes_eff", "  of the machine limit", eff, "%", ">= 90 %", eff >= 90)
    report.add("cpu_processes_of_alone", f"  of the model alone on {CORES} processes", 100 * procs.per_s / alone_per_s, "%")
    report.add("cpu_two_workers", "2 single-process workers", two.per_s, "stations/s")
    eff2 = 100 * two.per_s / limit
    report.add("cpu_two_workers_eff", "  of the machine limit", eff2, "%", ">= 85 %", eff2 >= 85)
    report.add("cpu_two_workers_of_alone", f"  of the model alone on {CORES} processes", 100 * two.per_s / alone_per_s, "%")
    share = 100 * max(two.by_worker.values()) / max(sum(two.by_worker.values()), 1) if two.by_worker else float("nan")
    report.add("cpu_two_workers_share", "  stations run by the busier worker", share, "%", "<= 60 %", share <= 60)
    pshare = 100 * max(procs.by_worker.values()) / max(sum(procs.by_worker.values()), 1) if procs.by_worker else float("nan")
    report.add("cpu_processes_share", f"  --processes {CORES}: stations run by the busiest child", pshare, "%")
    for key, r in res.cpu.items():
        per_station_ms = 1000 * r.worker_cpu_s / r.stations
        report.add(f"cpu_{key}_worker_cpu", f"  {key}: worker CPU a station (model + fleet)", per_station_ms, "ms")
        got = 100 * r.worker_cpu_s / (r.wall_s * r.processes)
        report.add(f"cpu_{key}_cpu_got", f"  {key}: CPU its worker processes got, of their wall time", got, "%")
        model = 100 * r.own_cpu_ms * r.stations / 1000 / r.worker_cpu_s
        report.add(f"cpu_{key}_model_share", f"  {key}: the model's share of the workers' CPU", model, "%")
        others = 100 * (r.machine_busy_s - r.worker_cpu_s) / (r.wall_s * CORES)
        report.add(f"cpu_{key}_others", f"  {key}: machine CPU used by everything else (fleet roles, other users)", others, "%")
    gap = max(r.gap_ms.get("p99", float("nan")) for r in res.cpu.values())
    report.add("duration_gap_p50", "recorded duration - processor's own time, p50", procs.gap_ms.get("p50", float("nan")), "ms")
    report.add("duration_gap_p99", "recorded duration - processor's own time, p99 (worst run)", gap, "ms", "<= 5 ms", gap <= 5)
    if res.celery_per_s is not None:
        report.add("celery_cpu", f"Celery peer: chord members, {CORES} prefork children", res.celery_per_s, "stations/s")
        ratio = procs.per_s / res.celery_per_s
        report.add("vs_celery", f"  --processes {CORES} / Celery", ratio, "x", ">= 2x", ratio >= 2)
    alone_one, alone_group = res.numpy_alone_us
    report.add("numpy_alone_station", "numpy model alone: called per station", alone_one, "µs/station")
    report.add("numpy_alone_group", "numpy model alone: one call for 100", alone_group, "µs/station")
    g, s = res.numpy["group"], res.numpy["station"]
    report.add("numpy_group", f"numpy model, group calls (--processes {CORES})", g.per_s, "stations/s")
    report.add("numpy_station", f"numpy model, per-station calls (--processes {CORES})", s.per_s, "stations/s")
    report.add("numpy_ratio", "  group / per-station, end to end", g.per_s / s.per_s, "x", ">= 8x", g.per_s / s.per_s >= 8)
    for mode, label in (("spawn", "each child loads it"), ("mmap", "each child mmaps it"), ("fork", "preloaded, forked")):
        rows = res.memory.get(mode)
        if rows:
            report.add(f"mem_{mode}_pss", f"200 MB model, {label}: PSS per child", statistics.fmean(r["pss"] for r in rows), "MiB")
            report.add(f"mem_{mode}_uss", f"200 MB model, {label}: USS per child", statistics.fmean(r["uss"] for r in rows), "MiB")
    report.elapsed_s = elapsed_s
    report.details = {
        "loops": res.loops,
        "cpu": {k: asdict(v) for k, v in res.cpu.items()},
        "numpy": {k: asdict(v) for k, v in res.numpy.items()},
        "memory": res.memory,
    }
    return report


async def run_models_bench(
    cfg: ModelsConfig, *, broker: KafkaBroker | None = None, workdir: Path | None = None, progress: Any = lambda message: None
) -> Report:
    started = time.monotonic()
    load_start = list(os.getloadavg())
    async with _context(BenchConfig(), broker, workdir, progress) as ctx:
        res = await collect(ctx, cfg)
    report = build_report(res, time.monotonic() - started)
    report.load = {"start": load_start, "end": list(os.getloadavg())}
    return report


@click.command()
@click.option("--quick", is_flag=True, help="CI-size run")
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
@click.option("--keep", type=click.Path(file_okay=False), help="keep logs and data in this directory")
@click.option("--peer/--no-peer", default=True, show_default=True, help="run the Celery peer (.venv-celery on first use)")
@click.option("--memory/--no-memory", default=True, show_default=True, help="measure memory with a 200 MB model")
def main(quick: bool, as_json: bool, keep: str | None, peer: bool, memory: bool) -> None:
    """Station models at full speed (scripts/bench --models)."""
    from batchfleet.logs import configure_logging

    configure_logging("human", "WARNING", "bench")
    cfg = ModelsConfig.quick() if quick else ModelsConfig()
    cfg.peer, cfg.memory = peer, memory

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    workdir = Path(keep) if keep else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run_models_bench(cfg, workdir=workdir, progress=progress))
    print(report.to_json().decode() if as_json else report.table())
    print("figures from a machine shared with other work read low: see the load average above", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fork-preload":
        _fork_preload_main(sys.argv[2])
    else:
        main()
