"""``scripts/bench --durability``: what the durability knobs cost, per write, on a loopback replica.

A fresh primary and one replica (both ``appendonly yes``, ``appendfsync everysec``, as deployed)
and one :class:`~batchfleet.store.BatchStore` on the primary.  Each figure is the latency of one
call, sequential (as the dispatcher writes a poll's batches one after the other, and an aggregator
freezes one body per upload), over ``--writes`` calls after a warm-up:

- ``create_batch`` (a 10-station batch with its jobs and offsets) without and with
  ``BATCHFLEET_INGEST_WAIT_REPLICAS=1`` (``WAIT 1`` on the connection that wrote);
- ``create_batch`` with ``min-replicas-to-write 1`` on the primary (a server-side check, no WAIT);
- ``freeze_payload`` (the upload body, ~1.5 KB) without and with ``BATCHFLEET_UPLOAD_WAIT_REPLICAS=1``.

Each row prints p50 / p99 / mean and the ceiling one sequential caller reaches (1000 / mean ms per
second).  On loopback the WAIT cost is the replica's round trip plus its scheduling delay, so on a
busy 2-core machine it is mostly CPU run-queue wait; across hosts add the network round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import orjson

from batchfleet.models import BatchSpec, Claim, PartitionRange
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import RedisServer

__all__ = ["DurabilityRow", "main", "run_durability_bench"]

_STATIONS = 10


@dataclass
class DurabilityRow:
    operation: str
    knob: str
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def per_s(self) -> float:
        return 1000 / self.mean_ms if self.mean_ms else 0.0


def _spec(topic: str, offset: int, timeout_s: float = 600.0) -> BatchSpec:
    return BatchSpec(
        batch_id=f"{topic}:0:{offset}",
        topic=topic,
        timeout_s=timeout_s,
        retention_s=60,
        stations={f"S{i:03d}": [{"stationId": f"S{i:03d}", "v": i, "ts": 1700000000 + offset}] for i in range(_STATIONS)},
        ranges=[PartitionRange(topic, 0, offset, offset + 1)],
    )


async def _timed(count: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    out = []
    for i in range(count):
        started = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _row(operation: str, knob: str, samples: list[float]) -> DurabilityRow:
    ordered = sorted(samples)
    p99 = ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)]
    return DurabilityRow(operation, knob, round(statistics.median(ordered), 3), round(p99, 3), round(statistics.fmean(ordered), 3))


async def _wait_in_sync(store: BatchStore, replicas: int = 1) -> None:
    for _ in range(300):
        info = await store.redis.info("replication")
        if int(info.get("connected_slaves", 0)) >= replicas and "online" in str(info.get("slave0", "")):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the replica did not come online")


_INGEST_KNOBS: list[tuple[str, tuple[int, int] | None, int]] = [
    ("none", None, 0),
    ("INGEST_WAIT_REPLICAS=1", (1, 500), 0),
    ("min-replicas-to-write 1", None, 1),
]


async def _ingest_rows(store: BatchStore, writes: int) -> list[DurabilityRow]:
    rows: list[DurabilityRow] = []
    for knob, wait, min_replicas in _INGEST_KNOBS:
        topic = f"D{len(rows)}"
        store.ingest_wait = wait
        await store.redis.config_set("min-replicas-to-write", str(min_replicas))
        await _timed(200, lambda i, t=f"{topic}W": store.create_batch(_spec(t, i)))  # type: ignore[misc]
        samples = await _timed(writes, lambda i, t=topic: store.create_batch(_spec(t, i)))  # type: ignore[misc]
        rows.append(_row("create_batch", knob, samples))
    store.ingest_wait = None
    await store.redis.config_set("min-replicas-to-write", "0")
    return rows


async def _claims(store: BatchStore, topic: str, count: int) -> list[Claim]:
    """``count`` batches whose deadline passed, each claimed: what an aggregator freezes a body for."""
    for i in range(count):
        await store.create_batch(_spec(topic, i, timeout_s=0.001))
    await asyncio.sleep(0.05)
    claims = []
    for i in range(count):
        claim = await store.claim(f"{topic}:0:{i}", 60_000)
        if claim is None:
            raise RuntimeError(f"could not claim {topic}:0:{i}")
        claims.append(claim)
    return claims


async def _freeze_row(store: BatchStore, knob: str, wait: bool, writes: int) -> DurabilityRow:
    claims = await _claims(store, f"F{int(wait)}", writes + 100)
    body = orjson.dumps({"results": [{"stationId": f"S{i:03d}", "value": i * 1.5, "pad": "x" * 100} for i in range(_STATIONS)]})

    async def freeze(i: int) -> object:
        if wait:
            return await store.freeze_payload_replicated(claims[i], body, 1, 500)
        return await store.freeze_payload(claims[i], body)

    await _timed(100, freeze)
    return _row("freeze_payload", knob, await _timed(writes, lambda i: freeze(i + 100)))


async def run_durability_bench(writes: int = 2000) -> list[DurabilityRow]:
    primary = RedisServer(appendonly=True).start()
    replica = RedisServer(appendonly=True, extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    store = BatchStore.from_url(primary.url)
    try:
        await _wait_in_sync(store)
        ingest = await _ingest_rows(store, writes)
        freeze = [await _freeze_row(store, "none", False, writes), await _freeze_row(store, "UPLOAD_WAIT_REPLICAS=1", True, writes)]
        return [*ingest, *freeze]
    finally:
        await store.aclose()
        replica.stop()
        primary.stop()


def table(rows: list[DurabilityRow]) -> str:
    base = {r.operation: r for r in rows if r.knob == "none"}
    lines = [
        f"{'operation':<15} {'knob':<25} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'+mean ms':>9} {'per s (1 caller)':>17}",
    ]
    for r in rows:
        added = r.mean_ms - base[r.operation].mean_ms if r.operation in base else 0.0
        lines.append(
            f"{r.operation:<15} {r.knob:<25} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {r.mean_ms:>8.3f} {added:>+9.3f} {r.per_s:>17,.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --durability", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=2000, help="timed calls per row (default 2000)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = asyncio.run(run_durability_bench(args.writes))
    if args.json:
        print(orjson.dumps([{**asdict(r), "per_s": round(r.per_s)} for r in rows], option=orjson.OPT_INDENT_2).decode())
    else:
        print("durability knobs, primary + 1 replica on loopback (AOF everysec on both):")
        print(table(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
