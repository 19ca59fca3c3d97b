"""``scripts/bench --models`` at a tiny size on the real local stack: every figure is there and finite,
each run uploaded every station, and the numpy model's group calls were group calls."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from batchfleet_dev.bench_models import ModelsConfig, run_models_bench
from batchfleet_dev.localstack import KafkaBroker


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_models_bench_reports_every_figure(broker: KafkaBroker, tmp_path: Path) -> None:
    cfg = ModelsConfig(cpu_stations=200, numpy_stations=400, per_batch=100, peer=False, memory=True)
    report = await run_models_bench(cfg, broker=broker, workdir=tmp_path)
    keys = {f.key for f in report.figures}
    expected = {
        "machine_limit",
        "cpu_alone_all_cores",
        "cpu_processes_of_alone",
        "cpu_one_process",
        "cpu_processes_eff",
        "cpu_two_workers_eff",
        "cpu_two_workers_share",
        "duration_gap_p99",
        "numpy_ratio",
        "mem_spawn_pss",
        "mem_mmap_pss",
        "mem_fork_pss",
    }
    assert expected <= keys, expected - keys
    for f in report.figures:
        assert isinstance(f.value, float | int) and math.isfinite(f.value), (f.key, f.value)
    assert {f.key for f in report.figures if f.passed is not None} >= {"cpu_processes_eff", "numpy_ratio"}
    cpu = report.details["cpu"]
    assert all(sum(run["by_worker"].values()) == 200 for run in cpu.values()), "every measured station recorded"
    assert len(cpu["two-workers"]["by_worker"]) == 2 and len(cpu["processes"]["by_worker"]) == 2
    fork, spawn = report.figure("mem_fork_uss").value, report.figure("mem_spawn_uss").value
    assert spawn > 150 > fork, "each spawned child holds the 200 MB itself; forked children share the parent's"
    assert "load" in report.table() or report.load
