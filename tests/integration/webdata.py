"""Helpers for the web console's tests: seed batches straight through the store's scripts, and an
ASGI client for the console app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from batchfleet.models import BatchSpec, Outcome, PartitionRange
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.web import create_app
from batchfleet_dev.localstack import free_port

ORIGIN = "http://127.0.0.1"


def spec(batch_id: str, stations: list[str], *, timeout_s: float = 60.0) -> BatchSpec:
    topic, partition, offset = batch_id.rsplit(":", 2)
    return BatchSpec(
        batch_id=batch_id,
        topic=topic,
        timeout_s=timeout_s,
        retention_s=600,
        stations={s: [{"stationId": s, "v": i}] for i, s in enumerate(stations)},
        ranges=[PartitionRange(topic, int(partition), int(offset), int(offset) + 1)],
    )


async def seed(store: BatchStore, topic: str, count: int, *, stations: int = 2, timeout_s: float = 600.0) -> list[str]:
    """``count`` open batches ``TOPIC:0:0..count-1`` (created in that order); their ids."""
    ids = [f"{topic}:0:{i}" for i in range(count)]
    for bid in ids:
        await store.create_batch(spec(bid, [f"S{j:03d}" for j in range(stations)], timeout_s=timeout_s))
    return ids


async def make_dead(store: BatchStore, batch_id: str, error: str = "HTTPStatusError: 503 from the target") -> None:
    """Claim a due batch and fail its only upload attempt: it lands in the dead-letter set."""
    claim = None
    for _ in range(200):
        claim = await store.claim(batch_id, 30_000)
        if claim is not None:
            break
        await asyncio.sleep(0.01)
    if claim is None:
        raise AssertionError(f"{batch_id} never became claimable")
    kind, _ = await store.fail_upload(claim, retry_delay_ms=1000, max_attempts=1, error=error)
    if kind != "dead":
        raise AssertionError(f"{batch_id}: fail_upload said {kind}")


async def record(store: BatchStore, batch_id: str, station: str, status: str, error: str | None = None) -> None:
    outcome = Outcome(status=status, error=error, duration_ms=12.5, worker="host:1", result={"v": 1} if status == "ok" else None)  # type: ignore[arg-type]
    await store.record_outcome(batch_id, station, outcome)


@asynccontextmanager
async def client(
    settings: Settings, store: BatchStore, *, app: FastAPI | None = None, address: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """The console app (``app``, else a new one) on an in-memory ASGI transport (same event loop as
    the test), as a client at ``address``."""
    app = app or create_app(settings, store=store)
    transport = httpx.ASGITransport(app=app, client=(address, 50_000))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN, follow_redirects=False) as c:
        yield c


@asynccontextmanager
async def served(settings: Settings, store: BatchStore, *, app: FastAPI | None = None) -> AsyncIterator[str]:
    """The console app (``app``, else a new one) on a real uvicorn server on a free loopback port
    (for streaming responses, which the in-memory transport buffers whole); its base URL."""
    port = free_port()
    app = app or create_app(settings, store=store)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
