"""arq worker settings built from batchfleet settings.  Jobs are JSON, never pickle."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from arq.connections import RedisSettings
from arq.worker import func

from batchfleet.errors import ConfigError
from batchfleet.keys import Keys
from batchfleet.runtime import freeze_startup_heap
from batchfleet.settings import Settings, load_settings
from batchfleet.store import GROUP_JOB, STATION_JOB
from batchfleet.workers.jobs import run_group, run_station
from batchfleet.workers.station import MAX_ATTEMPTS, WorkerContext, shutdown, startup_with

__all__ = ["bound_reads", "build_worker_settings_class", "job_budget_factor", "json_dumps", "json_loads", "worker_settings"]


JOB_TIMEOUT_EXTRA_S = 5  # room to record the outcome after the budget ran out


def json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_loads(raw: bytes) -> Any:
    return orjson.loads(raw)


def _redis_settings(settings: Settings) -> RedisSettings:
    redis = RedisSettings.from_dsn(settings.redis_url.get_secret_value())
    if settings.redis_sentinels:  # arq asks the Sentinels for the primary (after every reconnect too)
        redis.host = settings.sentinel_addresses()
        redis.sentinel = True
        redis.sentinel_master = settings.redis_sentinel_master
    if settings.redis_tls_ca_file is not None:
        redis.ssl_ca_certs = str(settings.redis_tls_ca_file)
    return redis


async def bound_reads(pool: Any, timeout_s: float) -> None:
    """Give arq's client the fleet's Redis read timeout (arq's RedisSettings has none), so its poll
    fails after ``timeout_s`` on a connection whose peer went silent (a cut link) instead of waiting
    out TCP's retransmission backoff.  The connection arq's start-up ping opened is dropped; every new
    one gets the timeout.  Called by the plain ``WorkerSettings``' on_startup (``batchfleet worker``
    opens its arq clients itself, with the timeout: workers/nodes.py)."""
    pool.connection_pool.connection_kwargs["socket_timeout"] = timeout_s
    await pool.connection_pool.disconnect()
    pool.connection_pool.reset()


def job_budget_factor(settings: Settings) -> int:
    """Station budgets one job may need end to end.  Without a concurrency limit a job's stations all
    start at once (one budget); with ``BATCHFLEET_WORKER_CONCURRENCY`` = C they take turns, each budget
    counted from its own start, so a job of STATIONS_PER_JOB stations may run ceil(STATIONS_PER_JOB / C)
    budgets one after the other.  (A dead worker's job is run again after arq's job timeout + 10 s.)"""
    if not settings.worker_concurrency:
        return 1
    return math.ceil(settings.stations_per_job / settings.worker_concurrency)


def worker_settings(settings: Settings, *, own_process: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` (also the attributes of WorkerSettings).
    ``own_process``: the worker is the process's service (not a task in someone else's event loop), so
    its start-up heap is frozen out of the garbage collector's way once the processor is loaded."""
    # arq's own per-job timeout is a backstop above the station budget, which the job enforces.
    # arq re-runs the job of a worker that died after job timeout + 10 s (its in-progress key TTL):
    # with the default 5 s budget, 20 s after the crashed attempt started (arq's default: 310 s).
    budget = settings.longest_station_budget_s() * job_budget_factor(settings)

    async def on_startup(ctx: WorkerContext) -> None:
        await bound_reads(ctx["redis"], settings.redis_socket_timeout_s)
        await startup_with(ctx, settings)
        if own_process:
            freeze_startup_heap()

    # A job runs once more than MAX_ATTEMPTS: a one-station job's last run records "gave up"; a group's
    # second run splits it into one-station jobs (a third covers a split cut short by a Redis outage).
    return {
        "functions": [
            func(
                run_group,  # type: ignore[arg-type]
                name=GROUP_JOB,
                max_tries=MAX_ATTEMPTS + 1,
                timeout=budget + JOB_TIMEOUT_EXTRA_S,
                keep_result=0,
            ),
            func(
                run_station,  # type: ignore[arg-type]
                name=STATION_JOB,
                max_tries=MAX_ATTEMPTS + 1,
                timeout=budget + JOB_TIMEOUT_EXTRA_S,
                keep_result=0,
            ),
        ],
        "redis_settings": _redis_settings(settings),
        "queue_name": Keys(settings.key_prefix, settings.shards).queue(0),
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay_s,
        "keep_result": 0,
        "job_serializer": json_dumps,
        "job_deserializer": json_loads,
        "on_startup": on_startup,
        "on_shutdown": shutdown,
        "handle_signals": True,
        "job_completion_wait": settings.worker_grace_s,
        "health_check_interval": 10,
    }


def build_worker_settings_class() -> type:
    """``arq batchfleet.workers.WorkerSettings``: a settings class read from the environment when first
    asked for.  An unmodified arq worker serves one queue on one plain connection, so it runs a fleet
    of one shard on a single Redis only."""
    settings = load_settings()
    if settings.shards != 1 or settings.redis_cluster:
        raise ConfigError(
            "arq batchfleet.workers.WorkerSettings serves one shard on a single Redis (BATCHFLEET_SHARDS=1, "
            f"BATCHFLEET_REDIS_CLUSTER=false); this fleet has {settings.shards} shard(s)"
            f"{' on a cluster' if settings.redis_cluster else ''}: run `batchfleet worker` instead"
        )
    return type("WorkerSettings", (), worker_settings(settings, own_process=True))
