"""``batchfleet demo``: the whole fleet on an embedded local stack, with a live progress view.

Starts a redis-server and the Kafka-protocol broker on free ports, one dispatcher, N workers,
one aggregator and the web console (as separate processes, as in production), and a producer of sample
station data.  Some stations fail, some return None, some are slower than the deadline (see
``demo_processor.py``).  Ctrl-C stops everything it started, by PID.
"""

from __future__ import annotations

import asyncio
import random
import secrets
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
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics, free_port
from batchfleet_dev.procs import RoleProcess, role_env, stop_all
from batchfleet_dev.sample import station_ids, station_message

__all__ = ["run_demo"]

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
        stop_all(self.procs, timeout_s=15)


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
    web_port, web_token = free_port(), secrets.token_urlsafe(12)
    env = role_env(
        extra={
            "BATCHFLEET_WEB_PORT": str(web_port),
            "BATCHFLEET_WEB_TOKEN": web_token,
            "BATCHFLEET_REDIS_URL": redis.url,
            "BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "BATCHFLEET_TOPICS": f"{REALTIME_TOPIC},{POLL_TOPIC}",
            "BATCHFLEET_CONFIG": str(_write_config(workdir)),
            "BATCHFLEET_UPLOADER": f"file://{workdir / 'uploads.jsonl'}",
            "BATCHFLEET_PROCESSOR": "batchfleet_dev.demo_processor:process_station",
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


def run_demo(*, duration_s: float, stations: int, workers: int, plain: bool) -> int:
    workdir = Path(".batchfleet") / time.strftime("demo-%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    redis = RedisServer(directory=workdir).start()
    broker = KafkaBroker(log_path=workdir / "broker.log").start()
    try:
        asyncio.run(
            _demo(workdir, redis, broker, {"duration_s": duration_s, "stations": stations, "workers": workers, "plain": plain})
        )
    finally:
        broker.stop()
        redis.stop()
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
