"""Model processors on a real redis-server: the life cycle (set-up once, before health; a failing
set-up is one line and exit code 2), group calls (mixed outcomes, a call that raises, one that
overruns), ``batchfleet worker --processes N`` (a killed child is restarted, SIGTERM drains every
child) and claiming only what a worker can start (a burst spreads over two workers)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchfleet.keys import Keys
from batchfleet.models import BatchSpec, PartitionRange
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.workers.main import run_worker
from batchfleet_dev.localstack import RedisServer
from batchfleet_dev.procs import RoleProcess, role_env, until_while_alive
from tests.integration import processors
from tests.integration.fleet import REPO, TEST_SHARDS, make_settings, wait_until

KEYS = Keys("bf", TEST_SHARDS)
MODEL = "tests.integration.processors:GroupModel"
# no limit: a thread per call; a limit of 1: calls run on the runner thread (workers/runners.py)
CONCURRENCY = pytest.mark.parametrize("concurrency", [0, 1], ids=["threads", "runners"])


def _settings(redis_server: RedisServer, **overrides: Any) -> Settings:
    return make_settings(redis_server.url, "127.0.0.1:9", ["t"], "tests.integration.uploadsink:collect", **overrides)


def _spec(batch_id: str, stations: list[str], groups: list[int] | None = None) -> BatchSpec:
    topic, partition, offset = batch_id.rsplit(":", 2)
    return BatchSpec(
        batch_id=batch_id,
        topic=topic,
        timeout_s=120.0,
        retention_s=120,
        stations={s: [{"stationId": s, "v": i}] for i, s in enumerate(stations)},
        ranges=[PartitionRange(topic, int(partition), int(offset), int(offset) + 1)],
        group_sizes=groups or [len(stations)],
        job_shape="group",
    )


@pytest.fixture
def model() -> Iterator[type[processors.GroupModel]]:
    processors.GroupModel.setups, processors.GroupModel.calls, processors.GroupModel.singles = 0, [], []
    yield processors.GroupModel
    processors.release.set()  # a hung group call's thread ends
    for t in threading.enumerate():
        if t.name == "station-processor":
            t.join(10)
    processors.release.clear()


@CONCURRENCY
async def test_a_group_call_gets_every_station_of_a_job_and_gives_one_outcome_each(
    redis_server: RedisServer, store: BatchStore, model: type[processors.GroupModel], concurrency: int
) -> None:
    stations = ["S-1", "NONE-1", "ERR-1", "MISSING-1", "LIST-1", "S-2"]
    await store.create_batch(_spec("t:0:0", stations, groups=[6]))
    await store.create_batch(_spec("t:0:1", ["S-3", "S-4"]))
    await run_worker(_settings(redis_server, processor=MODEL, worker_concurrency=concurrency), burst=True)
    o = await store.batch_outcomes("t:0:0")
    assert {s: o[s].status for s in stations} == {
        "S-1": "ok",
        "NONE-1": "empty",
        "ERR-1": "failed",
        "MISSING-1": "failed",
        "LIST-1": "failed",
        "S-2": "ok",
    }
    assert o["S-1"].result == {"stationId": "S-1", "n": 1, "group": 6, "setups": 1}
    assert o["ERR-1"].error == "ValueError: no model input for ERR-1"
    assert o["MISSING-1"].error == "no outcome returned for this station by process_group"
    assert o["LIST-1"].error == "processor returned list, expected dict or None"
    assert sorted(model.calls) == [sorted(stations), ["S-3", "S-4"]], "one call per job"
    assert model.singles == [] and model.setups == 1, "set up once per process; no one-station call"
    stats = await store.stats()
    assert (stats["stations_ok"], stats["stations_empty"], stats["stations_failed"]) == (4, 1, 3)
    assert stats.get("duplicate_results", 0) == 0


@CONCURRENCY
async def test_a_group_call_that_raises_runs_its_stations_one_by_one(
    redis_server: RedisServer, store: BatchStore, model: type[processors.GroupModel], concurrency: int
) -> None:
    stations = ["S-1", "RAISEGROUP-1", "S-2"]
    await store.create_batch(_spec("t:0:0", stations))
    await run_worker(_settings(redis_server, processor=MODEL, worker_concurrency=concurrency), burst=True)
    o = await store.batch_outcomes("t:0:0")
    assert {s: o[s].status for s in stations} == {"S-1": "ok", "RAISEGROUP-1": "failed", "S-2": "ok"}
    assert o["RAISEGROUP-1"].error == "RuntimeError: bad input at RAISEGROUP-1", "only the culprit fails"
    assert model.calls == [sorted(stations)] and sorted(model.singles) == sorted(stations)
    assert (await store.stats()).get("duplicate_results", 0) == 0


@CONCURRENCY
async def test_a_group_call_past_its_budget_fails_its_stations_with_a_timeout(
    redis_server: RedisServer, store: BatchStore, model: type[processors.GroupModel], concurrency: int
) -> None:
    await store.create_batch(_spec("t:0:0", ["S-1", "HANGGROUP-1"]))
    await store.create_batch(_spec("t:0:1", ["S-2"]))
    await run_worker(_settings(redis_server, processor=MODEL, station_timeout_s=1.0, worker_concurrency=concurrency), burst=True)
    hung = await store.batch_outcomes("t:0:0")
    assert {s: (o.status, o.error) for s, o in hung.items()} == {
        s: ("failed", "timeout: the group call of 2 station(s) gave no result within its 1s budget") for s in ("S-1", "HANGGROUP-1")
    }
    assert all(o.duration_ms >= 1000 for o in hung.values())
    assert (await store.batch_outcomes("t:0:1"))["S-2"].status == "ok", "the other job's call is not held up"
    assert model.singles == []


async def test_budget_and_duration_count_from_the_start_of_each_station(redis_server: RedisServer, store: BatchStore) -> None:
    """With one call at a time, six 20 ms CPU stations of one job take turns: each is recorded at about
    its own time, not the time since its job was claimed."""
    stations = [f"S-{i}" for i in range(6)]
    await store.create_batch(_spec("t:0:0", stations))
    settings = _settings(redis_server, processor="tests.integration.processors:cpu_process", worker_concurrency=1)
    await run_worker(settings, burst=True)
    o = await store.batch_outcomes("t:0:0")
    results = sorted((r["start"], r["end"]) for r in (x.result for x in o.values()) if r)
    assert len(results) == 6
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(results)), "one station at a time"
    for x in o.values():  # the recorded duration is the station's own run, not its wait for a turn
        assert x.result is not None and x.duration_ms < (x.result["end"] - x.result["start"]) * 1000 + 50, x


# -- processes: set-up, --processes, SIGTERM, spread ---------------------------------------------


def _worker(settings: Settings, tmp_path: Path, name: str, *args: str, extra: dict[str, str] | None = None) -> RoleProcess:
    env = role_env(settings, extra)
    return RoleProcess("worker", env, tmp_path / f"{name}.log", [sys.executable, "-m", "batchfleet", "worker", *args])


def test_a_failing_set_up_stops_the_worker_with_one_line_and_exit_code_2(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = _settings(redis_server, processor="tests.integration.processors:FailingSetupModel")
    for processes in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "batchfleet", "worker", "--processes", processes],
            env=role_env(settings, {"BATCHFLEET_LOG_LEVEL": "WARNING"}),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            "Error: BATCHFLEET_PROCESSOR='tests.integration.processors:FailingSetupModel': setup() failed: "
            "OSError: weights.bin: no such file (while loading the model)"
        ], processes


async def _worker_pids(store: BatchStore) -> set[int]:
    return {int(info["pid"]) for info in (await store.live_processes("worker")).values()}


async def test_health_is_not_ready_until_the_model_is_set_up(redis_server: RedisServer, store: BatchStore, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    settings = _settings(redis_server, processor="tests.integration.processors:SlowSetupModel")
    proc = _worker(settings, tmp_path, "w", extra={"TEST_SETUP_GATE": str(gate)})
    try:
        await until_while_alive(lambda: _exists(Path(f"{gate}.started")), 30, "set-up to start", [proc])
        health = [sys.executable, "-m", "batchfleet", "health", "worker", "--name", f"{os.uname().nodename}:{proc.pid}"]
        env = role_env(settings)
        assert (await asyncio.to_thread(_run, health, env)) == 1, "not ready in set-up"
        gate.touch()
        await until_while_alive(lambda: _has_pid(store, proc.pid), 30, "heartbeat after set-up", [proc])
        assert (await asyncio.to_thread(_run, health, env)) == 0
    finally:
        assert proc.stop() == 0, proc.log_tail()


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


def _run(args: list[str], env: dict[str, str]) -> int:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, timeout=30).returncode


async def _has_pid(store: BatchStore, pid: int) -> bool:
    return pid in await _worker_pids(store)


async def test_processes_restart_a_killed_child_and_sigterm_drains_every_child(
    redis_server: RedisServer, store: BatchStore, tmp_path: Path
) -> None:
    settings = _settings(redis_server, processor="tests.integration.processors:async_process", worker_grace_s=20)
    settings = settings.model_copy(update={"worker_concurrency": 1})
    proc = _worker(settings, tmp_path, "sup", "--processes", "2")
    try:
        await until_while_alive(lambda: _n_pids(store, 2), 60, "two worker processes", [proc])
        first = await _worker_pids(store)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await until_while_alive(lambda: _replaced(store, first, victim), 60, "the killed child restarted", [proc])
        assert "died (signal SIGKILL)" in proc.log_tail(100_000)
        # each child is running a 3 s station (one at a time) when SIGTERM comes: each finishes and records it
        stations = [f"SLOW-{i}" for i in range(8)]
        await store.create_batch(_spec("t:0:0", stations, groups=[1] * 8))
        await wait_until(lambda: _both_running(store), 30, "both children running stations")
        proc.signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        proc.stop()
    assert code == 0, proc.log_tail()
    o = await store.batch_outcomes("t:0:0")
    assert len({x.worker for x in o.values()}) == 2 and all(x.status == "ok" for x in o.values()), proc.log_tail()
    assert await store.queue_depth() == 8 - len(o), "what was not started stays queued"
    assert not await _worker_pids(store), "every child removed its heartbeat"
    assert "draining 2 worker process(es)" in proc.log_tail(100_000)


async def _n_pids(store: BatchStore, n: int) -> bool:
    return len(await _worker_pids(store)) == n


async def _replaced(store: BatchStore, first: set[int], victim: int) -> bool:
    pids = await _worker_pids(store)
    return len(pids) == 2 and victim not in pids and len(pids & first) == 1


async def _both_running(store: BatchStore) -> bool:
    infos = (await store.live_processes("worker")).values()
    return len(infos) == 2 and all(info.get("running") for info in infos)


async def test_a_burst_spreads_over_two_idle_workers(redis_server: RedisServer, store: BatchStore, tmp_path: Path) -> None:
    """Twelve jobs of ten 20 ms CPU stations queued at once; each worker takes only a job it can start
    now (one call at a time), so both run a fair share instead of one claiming them all."""
    settings = _settings(redis_server, processor="tests.integration.processors:cpu_process", worker_concurrency=1)
    procs = [_worker(settings, tmp_path, f"w{i}") for i in range(2)]
    try:
        await until_while_alive(lambda: _n_pids(store, 2), 60, "two workers", procs)
        for b in range(3):
            await store.create_batch(_spec(f"t:0:{b}", [f"S{b}-{i}" for i in range(40)], groups=[10] * 4))

        async def all_done() -> bool:
            return all([len(await store.batch_outcomes(f"t:0:{b}")) == 40 for b in range(3)])

        await until_while_alive(all_done, 120, "every station recorded", procs)
    finally:
        for p in procs:
            p.stop()
    by_worker: Counter[str] = Counter()
    for b in range(3):
        by_worker.update(o.worker for o in (await store.batch_outcomes(f"t:0:{b}")).values())
    assert len(by_worker) == 2 and min(by_worker.values()) >= 30, by_worker  # of 120; claim-3-up-to-50 gave 0 or 120


def test_worker_processes_setting_is_checked() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchfleet", "worker", "--processes", "0"],
        env=role_env(None, {"BATCHFLEET_PROCESSOR": MODEL}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "BATCHFLEET_WORKER_PROCESSES" in done.stderr or "processes" in done.stderr
