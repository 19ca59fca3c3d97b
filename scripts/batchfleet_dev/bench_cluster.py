"""``scripts/bench --cluster``: the fleet on a 3-primary Redis Cluster next to the same run on one Redis.

Loopback only, bounded in time.  A fresh 3-primary cluster (``redis-cli --cluster create``) and a
fresh single redis-server, one shared Kafka-protocol broker, a topic with ``partitions`` partitions
(12 by default) and ``shards`` shards (12).  Each run pre-produces ``stations`` stations as
100-station messages spread round-robin over the partitions, then starts 1 dispatcher, ``workers``
worker processes and 1 aggregator (no-op processor, timing uploader of :mod:`batchfleet_dev.bench`)
and measures:

- **stations/s**: uploaded stations over the time from the fleet's start to the last upload;
- **Redis CPU per 1,000 stations** of every primary (``/proc`` of each redis-server), and the
  **single-primary ceiling** ``1000 / (CPU seconds per 1,000 stations)`` of the single-node run:
  what one primary could serve at 100 % of one core;
- **spread** over the primaries of the keys (``DBSIZE`` once every batch is dispatched, before any
  worker runs) and of the commands they executed (``total_commands_processed`` delta), each as the
  largest deviation from the mean in percent (target: within ±20 % with ≥ 12 partitions).

Figures on a shared 2-core machine: three primaries, the fleet and the broker compete for 2 cores,
so the cluster's stations/s shows correctness and spread, not a scaling figure.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import redis

from batchfleet_dev.bench import UPLOAD_LOG_ENV, cpu_seconds, station_messages
from batchfleet_dev.cluster import RedisCluster
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics
from batchfleet_dev.procs import RoleProcess, role_env, stop_all, until_while_alive

__all__ = ["ClusterBench", "main", "run_cluster_bench"]

SPREAD_TARGET_PCT = 20.0


@dataclass
class RunFigures:
    backend: str
    stations: int
    seconds: float
    stations_per_s: float
    redis_cpu_per_1000: dict[str, float]  # per redis-server (host:port)
    keys: dict[str, int]
    commands: dict[str, int]

    @property
    def total_redis_cpu_per_1000(self) -> float:
        return sum(self.redis_cpu_per_1000.values())


@dataclass
class ClusterBench:
    partitions: int
    shards: int
    workers: int
    single: RunFigures
    cluster: RunFigures
    notes: list[str] = field(default_factory=list)

    @property
    def ceiling_per_s(self) -> float:
        cpu = self.single.total_redis_cpu_per_1000
        return 1000 / cpu if cpu > 0 else math.nan

    def table(self) -> str:
        rows = [
            ("single node: stations/s", f"{self.single.stations_per_s:,.0f}", ""),
            ("single node: Redis CPU s per 1,000 stations", f"{self.single.total_redis_cpu_per_1000:.3f}", ""),
            ("single-primary ceiling (stations/s at one full core)", f"{self.ceiling_per_s:,.0f}", ""),
            (f"cluster (3 primaries, {self.shards} shards): stations/s", f"{self.cluster.stations_per_s:,.0f}", ""),
        ]
        for node, cpu in sorted(self.cluster.redis_cpu_per_1000.items()):
            rows.append((f"  primary {node}: Redis CPU s per 1,000 stations", f"{cpu:.3f}", ""))
        for name, spread in (("keys", spread_pct(self.cluster.keys)), ("commands", spread_pct(self.cluster.commands))):
            verdict = "PASS" if spread <= SPREAD_TARGET_PCT else "MISS"
            values = ", ".join(str(v) for _, v in sorted(getattr(self.cluster, name).items()))
            rows.append(
                (f"  spread of {name} over primaries ({values})", f"±{spread:.1f} %", f"≤ ±{SPREAD_TARGET_PCT:.0f} % {verdict}")
            )
        width = max(len(r[0]) for r in rows)
        lines = [f"{label.ljust(width)}  {value:>10}  {target}".rstrip() for label, value, target in rows]
        return "\n".join([*lines, *self.notes])


def spread_pct(values: dict[str, int]) -> float:
    """The largest deviation from the mean, in percent of the mean."""
    if not values:
        return math.nan
    mean = sum(values.values()) / len(values)
    return max(abs(v - mean) for v in values.values()) / mean * 100 if mean else math.nan


def _info(port: int, section: str) -> dict[str, object]:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
        return dict(client.info(section))


def _dbsize(port: int) -> int:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
        return int(client.dbsize())


async def _run(
    backend: str,
    servers: list[RedisServer],
    url: str,
    broker: KafkaBroker,
    workdir: Path,
    *,
    stations: int,
    partitions: int,
    shards: int,
    workers: int,
) -> RunFigures:
    topic = f"BENCH-{backend.upper()}-{int(time.time() * 1000) % 10**9}"
    await create_topics(broker.bootstrap, [topic], partitions=partitions)
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i, value in enumerate(station_messages(stations, 100)):
            await producer.send(topic, value, partition=i % partitions)
        await producer.flush()
    finally:
        await producer.stop()
    uploads = workdir / f"uploads-{backend}.jsonl"
    env = role_env(
        extra={
            "BATCHFLEET_REDIS_URL": url,
            "BATCHFLEET_REDIS_CLUSTER": "true" if backend == "cluster" else "false",
            "BATCHFLEET_SHARDS": str(shards),
            "BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "BATCHFLEET_TOPICS": topic,
            "BATCHFLEET_KAFKA_GROUP_ID": f"g-{topic}",
            "BATCHFLEET_PROCESSOR": "batchfleet_dev.bench:noop_processor",
            "BATCHFLEET_UPLOADER": "batchfleet_dev.bench:record_upload",
            "BATCHFLEET_BATCHING": "message",
            "BATCHFLEET_BATCH_TIMEOUT_S": "300",
            "BATCHFLEET_RETENTION_S": "60",
            "BATCHFLEET_LOG_LEVEL": "WARNING",
            UPLOAD_LOG_ENV: str(uploads),
        }
    )
    ports = [s.port for s in servers]
    procs: list[RoleProcess] = []
    try:
        cpu0 = {p: cpu_seconds(s.proc.pid) for p, s in zip(ports, servers, strict=True) if s.proc is not None}
        cmds0 = {p: int(str(_info(p, "stats")["total_commands_processed"])) for p in ports}
        started = time.monotonic()
        procs.append(RoleProcess("dispatcher", env, workdir / f"{backend}-dispatcher.log"))
        batches = math.ceil(stations / 100)
        await until_while_alive(
            lambda: asyncio.to_thread(_dispatched, ports, shards, batches, backend), 300, "every batch dispatched", procs
        )
        keys = {f"127.0.0.1:{p}": _dbsize(p) for p in ports}
        procs += [RoleProcess("worker", env, workdir / f"{backend}-worker-{i}.log") for i in range(workers)]
        procs.append(RoleProcess("aggregator", env, workdir / f"{backend}-aggregator.log"))
        await until_while_alive(lambda: asyncio.to_thread(lambda: _lines(uploads) >= batches), 600, "every batch uploaded", procs)
        seconds = time.monotonic() - started
        cpu = {
            f"127.0.0.1:{p}": (cpu_seconds(s.proc.pid) - cpu0[p]) / stations * 1000
            for p, s in zip(ports, servers, strict=True)
            if s.proc is not None
        }
        commands = {f"127.0.0.1:{p}": int(str(_info(p, "stats")["total_commands_processed"])) - cmds0[p] for p in ports}
    finally:
        stop_all(procs, timeout_s=20)
    return RunFigures(backend, stations, seconds, stations / seconds, cpu, keys, commands)


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _dispatched(ports: list[int], shards: int, batches: int, backend: str) -> bool:
    """Every batch created: the sum of ``batches_created`` over the shards' stats hashes."""
    from batchfleet.keys import Keys

    keys = Keys("bf", shards)
    total = 0
    for shard in range(shards):
        name = keys.stats(shard)
        for port in ports:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
                    total += int(client.hget(name, "batches_created") or 0)
                break
            except redis.exceptions.ResponseError:  # MOVED: another primary holds this shard
                continue
    return total >= batches


async def run_cluster_bench(
    *, stations: int = 20_000, partitions: int = 12, shards: int = 12, workers: int = 2, workdir: Path | None = None
) -> ClusterBench:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="batchfleet-bench-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = KafkaBroker(log_path=workdir / "broker.log").start()
    try:
        single = RedisServer().start()
        try:
            one = await _run(
                "single", [single], single.url, broker, workdir, stations=stations, partitions=partitions, shards=1, workers=workers
            )
        finally:
            single.stop()
        cluster = RedisCluster(primaries=3).start()
        try:
            many = await _run(
                "cluster",
                cluster.nodes,
                cluster.url,
                broker,
                workdir,
                stations=stations,
                partitions=partitions,
                shards=shards,
                workers=workers,
            )
        finally:
            cluster.stop()
    finally:
        broker.stop()
    return ClusterBench(partitions, shards, workers, one, many)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = asyncio.run(
        run_cluster_bench(stations=args.stations, partitions=args.partitions, shards=args.shards, workers=args.workers)
    )
    if args.json:
        data = asdict(report) | {"ceiling_per_s": report.ceiling_per_s}
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
