"""``scripts/bench --idle``: what an idle fleet costs its Redis, per number of shards.

Each shard adds fixed work whatever the traffic: every worker reads every shard's queue on each poll
(``BATCHFLEET_WORKER_POLL_DELAY_S``), every aggregator watches every shard's deadlines and wake-up
list, every dispatcher checks each shard's offsets every 2 s.  For each ``--shards`` value this
starts a fresh redis-server, one dispatcher, ``--workers`` workers and one aggregator (own topic, no
messages), waits until every process has sent its heartbeat, and then measures over ``--window-s``:

- Redis CPU in percent of one core (``/proc`` of the redis-server);
- commands per second (``total_commands_processed``; a pipelined or scripted command counts once).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import redis
from pydantic import SecretStr

from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet_dev.bench import cpu_seconds
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from batchfleet_dev.procs import RoleProcess, role_env, stop_all, until_while_alive

__all__ = ["IdleRow", "main", "run_idle_bench"]


@dataclass
class IdleRow:
    shards: int
    workers: int
    redis_cpu_pct: float
    commands_per_s: float


def _commands(port: int) -> int:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
        return int(str(client.info("stats")["total_commands_processed"]))


async def _all_beating(settings: Settings, expected: int, procs: list[RoleProcess]) -> None:
    async with BatchStore.from_settings(settings) as store:

        async def beating() -> bool:
            return len(await store.live_processes()) >= expected

        await until_while_alive(beating, 60, f"heartbeat of all {expected} processes", procs, every_s=0.2)


async def _measure(broker: KafkaBroker, shards: int, workers: int, window_s: float, workdir: Path) -> IdleRow:
    server = RedisServer().start()
    procs: list[RoleProcess] = []
    try:
        topic = f"IDLE-{shards}-{int(time.time() * 1000) % 10**9}"
        settings = Settings(
            redis_url=SecretStr(server.url),
            kafka_bootstrap_servers=broker.bootstrap,
            topics=[topic],
            kafka_group_id=f"g-{topic}",
            uploader=f"file://{workdir / 'uploads.jsonl'}",
            processor="batchfleet_dev.bench:noop_processor",
            shards=shards,
            log_level="WARNING",
        )
        env = role_env(settings)
        roles = ["dispatcher", *["worker"] * workers, "aggregator"]
        procs = [RoleProcess(role, env, workdir / f"{shards}-{role}-{i}.log") for i, role in enumerate(roles)]
        await _all_beating(settings, len(roles), procs)
        assert server.proc is not None
        cpu0, cmds0, t0 = cpu_seconds(server.proc.pid), _commands(server.port), time.monotonic()
        await asyncio.sleep(window_s)
        cpu1, cmds1, t1 = cpu_seconds(server.proc.pid), _commands(server.port), time.monotonic()
        return IdleRow(shards, workers, 100 * (cpu1 - cpu0) / (t1 - t0), (cmds1 - cmds0) / (t1 - t0))
    finally:
        stop_all(procs, timeout_s=20)
        server.stop()


async def run_idle_bench(
    shard_counts: list[int], *, workers: int = 2, window_s: float = 20.0, workdir: Path | None = None
) -> list[IdleRow]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="batchfleet-bench-idle-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = KafkaBroker(log_path=workdir / "broker.log").start()
    try:
        return [await _measure(broker, shards, workers, window_s, workdir) for shards in shard_counts]
    finally:
        broker.stop()


def table(rows: list[IdleRow]) -> str:
    lines = [f"{'shards':>6} {'workers':>7} {'Redis CPU % of a core':>22} {'commands/s':>11}"]
    lines += [f"{r.shards:>6} {r.workers:>7} {r.redis_cpu_pct:>22.2f} {r.commands_per_s:>11,.0f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --idle", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--shards", default="1,12,64", help="shard counts to measure (default 1,12,64)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--window-s", type=float, default=20.0, help="seconds measured per row (default 20)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = asyncio.run(run_idle_bench([int(s) for s in args.shards.split(",")], workers=args.workers, window_s=args.window_s))
    if args.json:
        print(orjson.dumps([asdict(r) for r in rows], option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"idle fleet (1 dispatcher, {args.workers} workers, 1 aggregator, no messages), default poll delays:")
        print(table(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
