"""Operator commands that read (and, for replay/re-dispatch, nudge) the fleet's state.

Each returns plain JSON-able data; ``batchfleet.views`` renders it for humans.
"""

from __future__ import annotations

import socket
from typing import Any

import orjson

from batchfleet.keys import message_id_for
from batchfleet.settings import Settings
from batchfleet.store import BatchStore

__all__ = [
    "batch_detail",
    "check_health",
    "dead_batches",
    "list_batches",
    "open_store",
    "quarantine_entries",
    "redispatch",
    "replay",
    "status_data",
]


def open_store(settings: Settings, name: str = "batchfleet-cli") -> BatchStore:
    return BatchStore.from_settings(settings, name=name)


def _progress_row(row: dict[str, Any], now_ms: int) -> dict[str, Any]:
    created = int(row.get("created_ms", now_ms))
    out: dict[str, Any] = {
        "batch_id": row["batch_id"],
        "topic": row.get("topic", ""),
        "state": row.get("state", ""),
        "done": row["done"],
        "expected": int(row.get("expected", 0)),
        "age_s": round((now_ms - created) / 1000, 3),
    }
    if row.get("state") == "open":
        out["deadline_in_s"] = round((int(row.get("deadline_ms", now_ms)) - now_ms) / 1000, 3)
    for name in ("reason", "upload_failures", "late"):
        if name in row:
            out[name] = row[name] if name == "reason" else int(row[name])
    return out


async def status_data(store: BatchStore, *, limit: int = 20) -> dict[str, Any]:
    """Everything `batchfleet status` shows, as data."""
    now_ms = await store.server_time_ms()
    open_ids = [bid for bid, _ in await store.open_batch_ids(limit=limit)]
    processes = await store.live_processes()
    lag: dict[str, int] = {}
    for member, info in processes.items():
        if member.startswith("dispatcher:"):
            lag.update(info.get("lag", {}))
    return {
        "now_ms": now_ms,
        "open_batches": [_progress_row(r, now_ms) for r in await store.progress(open_ids)],
        "counts": await store.counts(),
        "processes": [{"role": m.split(":", 1)[0], "name": m.split(":", 1)[1], **info} for m, info in sorted(processes.items())],
        "kafka_lag": dict(sorted(lag.items())),
        "counters": await store.stats(),
    }


async def batch_detail(store: BatchStore, batch_id: str) -> dict[str, Any] | None:
    """One batch: its state and every expected station's outcome, error text and timing."""
    meta = await store.batch_meta(batch_id)
    if not meta:
        return None
    outcomes = await store.batch_outcomes(batch_id)
    late = await store.late_outcomes(batch_id)
    stations = [str(s) for s in orjson.loads(meta.pop("stations", "[]"))]
    rows = []
    for sid in stations:
        o = outcomes.get(sid)
        row: dict[str, Any] = {"station": sid, "outcome": o.status if o else "missing"}
        if o is not None:
            row.update({"duration_ms": o.duration_ms, "worker": o.worker, "attempt": o.attempt})
            if o.error:
                row["error"] = o.error
        if sid in late:
            row["late"] = {"outcome": late[sid].status, "error": late[sid].error}
        rows.append(row)
    return {"batch_id": batch_id, "meta": meta, "ttl_s": await store.batch_ttl_s(batch_id), "stations": rows}


async def list_batches(store: BatchStore, *, state: str | None, topic: str | None, limit: int) -> list[dict[str, Any]]:
    """Batches newest first, filtered by state and topic."""
    now_ms = await store.server_time_ms()
    rows: list[dict[str, Any]] = []
    scan = max(limit * 4, 200)
    for row in await store.progress(await store.batch_ids(scan)):
        if (state and row.get("state") != state) or (topic and row.get("topic") != topic):
            continue
        rows.append(_progress_row(row, now_ms))
        if len(rows) >= limit:
            break
    return rows


async def dead_batches(store: BatchStore) -> list[dict[str, Any]]:
    ids = await store.dead_batch_ids()
    rows = []
    for bid in ids:
        meta = await store.batch_meta(bid)
        rows.append(
            {
                "batch_id": bid,
                "topic": meta.get("topic", ""),
                "dead_ms": int(meta.get("dead_ms", 0)),
                "upload_failures": int(meta.get("upload_failures", 0)),
                "last_error": meta.get("last_error", ""),
            }
        )
    return rows


def _entry(raw: dict[str, bytes]) -> dict[str, Any]:
    value = raw.get("value", b"")
    return {
        "id": raw["id"].decode() if "id" in raw else "",
        "topic": raw.get("topic", b"").decode(),
        "partition": int(raw.get("partition", b"0")),
        "offset": int(raw.get("offset", b"0")),
        "reason": raw.get("reason", b"").decode(),
        "size": int(raw.get("size", b"0")),
        "quarantined_ms": int(raw.get("quarantined_ms", b"0")),
        "value": value.decode("utf-8", errors="replace")[:500],
        "redispatched": raw.get("redispatched", b"").decode() or None,
    }


async def quarantine_entries(store: BatchStore, limit: int = 100) -> list[dict[str, Any]]:
    return [_entry(raw) for raw in await store.quarantined(limit)]


async def replay(settings: Settings, batch_ids: list[str], replay_all: bool) -> list[tuple[str, bool, str]]:
    """Re-queue dead-lettered batches; (batch id, replayed, previous state) for each."""
    async with open_store(settings) as store:
        ids = await store.dead_batch_ids() if replay_all else batch_ids
        results = []
        for bid in ids:
            ok, state = await store.replay(bid)
            results.append((bid, ok, state))
        return results


async def redispatch(settings: Settings, message_id: str, value: bytes | None) -> str:
    """Produce a quarantined message (or a corrected value) to its topic again; the dispatcher
    ingests it as a new message (new offset).  Returns the new Kafka coordinates."""
    from aiokafka import AIOKafkaProducer

    async with open_store(settings) as store:
        entry = await store.quarantined_entry(message_id)
        if entry is None:
            raise LookupError(f"no quarantined message {message_id}")
        body = value if value is not None else entry.get("value", b"")
        if value is None and int(entry.get("size", b"0")) > len(body):
            raise ValueError(f"{message_id} was truncated in quarantine ({int(entry['size'])} bytes); pass --value-file")
        topic = entry["topic"].decode()
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, body)
        finally:
            await producer.stop()
        where = message_id_for(topic, sent.partition, sent.offset)
        await store.mark_redispatched(message_id, where)
        return where


async def check_health(settings: Settings, role: str, name: str | None) -> tuple[bool, str]:
    """(healthy, message): a ROLE process on this host (or HOST:PID ``name``) has a live heartbeat."""
    want = f"{role}:{name}" if name else f"{role}:{socket.gethostname()}:"
    try:
        async with open_store(settings, "batchfleet-health") as store:
            live = await store.live_processes(role)
    except Exception as exc:
        return False, f"unhealthy: cannot read heartbeats from Redis: {type(exc).__name__}: {exc}"
    matches = [m for m in live if (m == want if name else m.startswith(want))]
    if not matches:
        return False, f"unhealthy: no live heartbeat for {want}*"
    return True, "healthy: " + ", ".join(f"{m} ({live[m].get('doing', '')})" for m in matches)
