"""Smoke test of ``batchfleet bench``: every measurement at a tiny size on the real local stack.

Asserts that the report carries every figure with a sane value (behaviour), never a timing target:
the machine running the tests is shared and slow by design.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from batchfleet_dev.bench import BenchConfig, Report, percentile, run_bench, sustained_rate
from batchfleet_dev.localstack import KafkaBroker

WORKERS = (2,)  # the targets are for 2 worker processes
FIGURES = [
    "e2e_w2_stations_per_s",
    "raw_arq_w2_jobs_per_s",
    "e2e_w2_vs_raw_arq",
    "dispatch_stations_per_s",
    "raw_enqueue_jobs_per_s",
    "dispatch_vs_enqueue",
    "commands_dispatcher_per_station",
    "commands_worker_per_station",
    "commands_aggregator_per_station",
    "arq_worker_commands_per_job",
    "arq_enqueue_commands_per_job",
    "sent_dispatcher_per_station",
    "sent_aggregator_per_station",
    "sent_arq_worker_per_job",
    "sent_worker_per_station",
    "sent_worker_own_per_station",
    "sent_worker_arq_pool_per_station",
    "latency_load_stations_per_s",
    "produce_to_upload_p50_ms",
    "produce_to_upload_p99_ms",
    "complete_to_upload_p50_ms",
    "complete_to_upload_p99_ms",
    "deadline_to_upload_p50_ms",
    "deadline_to_upload_p99_ms",
    "produce_to_created_p50_ms",
    "produce_to_created_p99_ms",
    "created_to_complete_p50_ms",
    "created_to_complete_p99_ms",
    "raw_arq_burst_p50_ms",
    "raw_arq_burst_p99_ms",
    "memory_open_station_bytes",
    "memory_recorded_station_bytes",
    "memory_input_bytes_per_station",
    "memory_raw_arq_job_bytes",
    "memory_after_retention_bytes",
    "big_dispatch_s",
    "big_upload_s",
    "big_peak_memory_bytes",
    "cpu_dispatcher_per_1000",
    "cpu_worker_per_1000",
    "cpu_aggregator_per_1000",
    "cpu_redis_per_1000",
    "e2e_cpu_dispatcher_per_1000",
    "e2e_cpu_worker_per_1000",
    "e2e_cpu_aggregator_per_1000",
    "e2e_cpu_redis_per_1000",
    "celery_members_per_s",
    "celery_cpu_worker_per_1000",
    "celery_cpu_redis_per_1000",
]
TARGETED = {
    "e2e_w2_stations_per_s",
    "e2e_w2_vs_raw_arq",
    "e2e_cpu_worker_per_1000",
    "e2e_cpu_redis_per_1000",
    "dispatch_vs_enqueue",
    "sent_worker_per_station",
    "produce_to_upload_p99_ms",
    "complete_to_upload_p99_ms",
    "deadline_to_upload_p99_ms",
    "memory_open_station_bytes",
    "memory_recorded_station_bytes",
    "memory_after_retention_bytes",
    "big_dispatch_s",
    "big_upload_s",
}


def tiny() -> BenchConfig:
    return BenchConfig(
        stations=300,
        worker_counts=WORKERS,
        roles_stations=300,
        command_stations=200,
        latency_s=2.0,
        latency_load=0.2,
        big_batch=400,
        bursts=2,
        celery_members=200,  # two chords of 100 (.venv-celery is created on first use)
    )


def value(report: Report, key: str) -> float:
    v = report.figure(key).value
    assert isinstance(v, int | float) and math.isfinite(v), f"{key} = {v!r}"
    return float(v)


def test_helpers() -> None:
    assert percentile([], 50) != percentile([], 50)  # NaN for no samples
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(range(1, 101), 99) == 99
    samples = [(float(t), float(t * 10)) for t in range(11)]  # 10 items per second, 100 in all
    assert sustained_rate(samples, 100) == pytest.approx(10.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_bench_reports_every_figure(broker: KafkaBroker, tmp_path: Path) -> None:
    report = await run_bench(tiny(), broker=broker, workdir=tmp_path)

    keys = [f.key for f in report.figures]
    assert sorted(keys) == sorted(FIGURES), set(keys) ^ set(FIGURES)
    assert {f.key for f in report.figures if f.passed is not None} == TARGETED
    for f in report.figures:
        assert f.target if f.passed is not None else not f.target, f.key

    # throughput and the ratios built from them
    for key in ("e2e_w2_stations_per_s", "raw_arq_w2_jobs_per_s", "dispatch_stations_per_s", "raw_enqueue_jobs_per_s"):
        assert value(report, key) > 0, key
    assert value(report, "e2e_w2_vs_raw_arq") == pytest.approx(
        value(report, "e2e_w2_stations_per_s") / value(report, "raw_arq_w2_jobs_per_s")
    )

    # Redis commands: arq's own counts are exact.  A batchfleet worker sends arq's run and finish
    # commands once per job (a group of stations), claims with one claim_jobs call per poll instead of
    # arq's six commands per job (WATCH EXISTS ZSCORE MULTI PSETEX EXEC), and records the stations of a
    # group that finish together with one record_outcome call.
    assert value(report, "arq_enqueue_commands_per_job") == pytest.approx(6, abs=0.05)  # WATCH EXISTS MULTI PSETEX ZADD EXEC
    arq_worker = value(report, "arq_worker_commands_per_job")
    assert 10 <= arq_worker <= 25
    # the tap runs one plain arq worker; commandstats come from the 2-worker baseline, where arq's per-job
    # claims also race (more WATCH/EXISTS/ZSCORE per job)
    assert 10 <= value(report, "sent_arq_worker_per_job") <= arq_worker + 1
    own, pool = value(report, "sent_worker_own_per_station"), value(report, "sent_worker_arq_pool_per_station")
    assert 0 < own < 0.2, own  # EVALSHA record_outcome per group + EVALSHA claim_jobs per poll
    assert 0 < pool < 1, pool  # arq's run and finish of a job, shared by the stations of its group
    assert own + pool == pytest.approx(value(report, "sent_worker_per_station"))
    assert value(report, "commands_worker_per_station") > value(report, "sent_worker_per_station")  # + inside Lua
    for role in ("dispatcher", "aggregator"):
        assert 0 < value(report, f"sent_{role}_per_station") < value(report, f"commands_{role}_per_station") < 10

    # latencies: measured, positive, ordered
    for key in ("produce_to_upload", "complete_to_upload", "deadline_to_upload", "raw_arq_burst"):
        p50, p99 = value(report, f"{key}_p50_ms"), value(report, f"{key}_p99_ms")
        assert 0 <= p50 <= p99, key
    assert value(report, "produce_to_upload_p50_ms") > value(report, "complete_to_upload_p50_ms")

    # memory: an open station costs little beyond its input, and retention gives it back
    assert value(report, "memory_input_bytes_per_station") == pytest.approx(tiny().record_bytes, abs=10)
    # (a group job holds its stations' records with a few bytes of framing each: at this tiny size the
    # figure sits within the allocator's noise, so only a gross regression is caught here)
    assert -100 < value(report, "memory_open_station_bytes") < 1000
    assert 100 < value(report, "memory_raw_arq_job_bytes") < 5000
    assert 0 < value(report, "memory_recorded_station_bytes") < 5000
    assert value(report, "memory_after_retention_bytes") < 1024 * 1024

    # the big batch was dispatched, uploaded complete, and cost memory
    assert value(report, "big_dispatch_s") > 0 and value(report, "big_upload_s") > 0
    assert report.details["big_batch"]["uploaded_ok"] == tiny().big_batch  # uploaded complete: every station ok
    assert report.details["big_batch"]["reason"] == "complete"
    assert value(report, "big_peak_memory_bytes") > 0

    for role in ("dispatcher", "worker", "aggregator", "redis"):
        assert value(report, f"cpu_{role}_per_1000") >= 0, role
        assert value(report, f"e2e_cpu_{role}_per_1000") >= 0, role

    # the peer ran the same no-op work, and the side-by-side table has every system from this run
    assert value(report, "celery_members_per_s") > 0 and value(report, "celery_cpu_worker_per_1000") > 0
    assert report.details["celery"]["chords"] == 2 and report.details["celery"]["size"] == 100
    names = [p.name for p in report.peers]
    assert [n.split(",")[0] for n in names] == ["batchfleet end to end", "raw arq no-op jobs", "Celery chords of 100 no-op tasks"]
    assert all(p.per_s > 0 for p in report.peers)
    assert set(report.load) == {"start", "end"} and "load average" in report.table()

    # both outputs carry every figure
    data = orjson.loads(report.to_json())
    assert set(data["figures"]) == set(FIGURES)
    table = report.table()
    for f in report.figures:
        assert f.label in table
    assert "targets met" in table


@pytest.mark.slow
async def test_cluster_bench_reports_throughput_cpu_per_primary_and_spread(tmp_path: Path) -> None:
    """``scripts/bench --cluster`` at a tiny size: both runs upload every batch and every figure is there."""
    from batchfleet_dev.bench_cluster import run_cluster_bench, spread_pct

    report = await run_cluster_bench(stations=1200, partitions=12, shards=6, workers=1, workdir=tmp_path)
    assert report.single.stations == report.cluster.stations == 1200
    assert report.single.stations_per_s > 0 and report.cluster.stations_per_s > 0
    assert len(report.cluster.redis_cpu_per_1000) == 3 and all(v > 0 for v in report.cluster.redis_cpu_per_1000.values())
    assert report.ceiling_per_s > 0
    assert len(report.cluster.keys) == 3 and all(n > 0 for n in report.cluster.keys.values()), report.cluster.keys
    assert all(n > 0 for n in report.cluster.commands.values())
    assert spread_pct(report.cluster.keys) >= 0
    table = report.table()
    assert "single-primary ceiling" in table and "spread of keys" in table and "spread of commands" in table


@pytest.mark.slow
async def test_idle_bench_reports_redis_cost_per_shard_count(tmp_path: Path) -> None:
    """``scripts/bench --idle`` at a tiny size: a row per shard count, and every worker poll reading
    every shard's queue shows as more commands with more shards."""
    from batchfleet_dev.bench_idle import run_idle_bench, table

    one, eight = await run_idle_bench([1, 8], workers=1, window_s=2.0, workdir=tmp_path)
    assert (one.shards, eight.shards) == (1, 8)
    assert one.commands_per_s > 0 and one.redis_cpu_pct >= 0
    assert eight.commands_per_s > one.commands_per_s
    assert "commands/s" in table([one, eight])
