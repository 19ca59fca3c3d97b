"""Operator commands that read (and, for replay/re-dispatch, nudge) the fleet's state.

Each returns plain JSON-able data; ``batchfleet.views`` renders it for humans.
"""

from __future__ import annotations

import socket
from typing import Any

import orjson

from batchfleet.keys import message_id_for, topic_of_batch
from batchfleet.retry import describe
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.store.scripts import RATE_OUTCOMES, RATE_SLOT_MS, RATE_SLOTS

__all__ = [
    "BATCH_STATES",
    "STAT_COUNTERS",
    "batch_detail",
    "batch_page",
    "check_health",
    "dead_batches",
    "dead_page",
    "list_batches",
    "open_store",
    "overview_data",
    "quarantine_entries",
    "quarantine_entry",
    "quarantine_page",
    "rates",
    "redispatch",
    "replay",
    "status_data",
]


# Every fleet-wide counter the Lua scripts keep in the stats hash; `status` shows each, zero included.
STAT_COUNTERS = (
    "batches_created",
    "batches_uploaded",
    "batches_complete",
    "batches_quorum",
    "batches_deadline",
    "batches_dead_lettered",
    "batches_replayed",
    "stations_dispatched",
    "stations_ok",
    "stations_failed",
    "stations_empty",
    "late_results",
    "duplicate_results",
    "messages_quarantined",
    "upload_failures",
)


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
        "warnings": process_warnings(processes),
        "open_batches": [_progress_row(r, now_ms) for r in await store.progress(open_ids)],
        "counts": await store.counts(),
        "processes": [{"role": m.split(":", 1)[0], "name": m.split(":", 1)[1], **info} for m, info in sorted(processes.items())],
        "kafka_lag": dict(sorted(lag.items())),
        "counters": dict.fromkeys(STAT_COUNTERS, 0) | await store.stats(),
        "shards": await store.shard_summary(),
    }


def process_warnings(processes: dict[str, dict[str, Any]]) -> list[str]:
    """What live processes report that an operator must act on: uploads with less protection than
    configured (aggregator/protection.py)."""
    warnings = []
    for member, info in sorted(processes.items()):
        protection = info.get("upload_protection")
        if isinstance(protection, dict):
            in_force, configured, shards = (protection.get(k) for k in ("in_force", "configured", "shards"))
            warnings.append(
                f"{member}: uploads run with less protection than configured: bodies are sent once {in_force} replica(s)"
                f" hold them, BATCHFLEET_UPLOAD_WAIT_REPLICAS={configured} (shards {shards}: fewer replicas could be"
                " promoted); docs/runbook.md, 'Uploads with less protection'"
            )
    return warnings


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

    from batchfleet.kafka import check_kafka, client_options

    async with open_store(settings) as store:
        entry = await store.quarantined_entry(message_id)
        if entry is None:
            raise LookupError(f"no quarantined message {message_id}")
        body = value if value is not None else entry.get("value", b"")
        if value is None and int(entry.get("size", b"0")) > len(body):
            raise ValueError(f"{message_id} was truncated in quarantine ({int(entry['size'])} bytes); pass --value-file")
        topic = entry["topic"].decode()
        await check_kafka(settings)  # refused credentials or TLS: ConfigError, unreachable: KafkaConnectionError
        producer = AIOKafkaProducer(**client_options(settings), acks="all")
        try:
            await producer.start()
            sent = await producer.send_and_wait(topic, body)
        finally:
            await producer.stop()  # also after a failed start: no "Unclosed AIOKafkaProducer"
        where = message_id_for(topic, sent.partition, sent.offset)
        await store.mark_redispatched(message_id, where)
        return where


async def check_health(settings: Settings, role: str, name: str | None) -> tuple[bool, str]:
    """(healthy, message): a ROLE process on this host (or HOST:PID ``name``) has a live heartbeat."""
    want = f"{role}:{name}" if name else f"{role}:{socket.gethostname()}:"
    try:
        async with open_store(settings, "batchfleet-health") as store:
            live = await store.live_processes(role)
    except Exception as exc:  # a probe answers, whatever went wrong
        return False, f"unhealthy: cannot read heartbeats from redis at {settings.redis_location()}: {describe(exc)}"
    matches = [m for m in live if (m == want if name else m.startswith(want))]
    if not matches:
        return False, f"unhealthy: no live heartbeat for {want}*"
    degraded = process_warnings({m: live[m] for m in matches})
    state = "healthy" + (" (degraded)" if degraded else "")
    return True, f"{state}: " + ", ".join(f"{m} ({live[m].get('doing', '')})" for m in matches) + "".join(
        f"; {w}" for w in degraded
    )


# -- reads for the web console (batchfleet web): pages over indexes, bounded work per request ----
BATCH_STATES = ("open", "finalized", "uploaded", "dead")
_SCAN_CHUNK = 500


async def rates(store: BatchStore) -> dict[str, Any]:
    """Uploaded stations per 10-s slot of the last hour (oldest first), by outcome, from ``bf:rates``;
    ``batches`` counts uploads.  Columnar: ``ok[i]`` is the count of the slot starting at
    ``t0_ms + i * slot_ms``; the last slot is the current, partial one."""
    now_ms = await store.server_time_ms()
    ring = await store.rate_ring()
    current = now_ms // RATE_SLOT_MS
    slots = range(current - RATE_SLOTS + 1, current + 1)
    names = (*RATE_OUTCOMES, "batches")
    series: dict[str, list[int]] = {name: [] for name in names}
    for slot in slots:
        pos = slot % RATE_SLOTS
        fresh = ring.get(f"{pos}:t") == slot
        for name in names:
            series[name].append(ring.get(f"{pos}:{name}", 0) if fresh else 0)
    return {
        "now_ms": now_ms,
        "t0_ms": slots[0] * RATE_SLOT_MS,
        "slot_ms": RATE_SLOT_MS,
        **series,
        "totals": {name: sum(values) for name, values in series.items()},
    }


async def overview_data(store: BatchStore, *, limit: int = 50) -> dict[str, Any]:
    """`status --json` plus the last hour's rates: what the console's overview shows."""
    return await status_data(store, limit=limit) | {"rates": await rates(store)}


def _cursor(raw: str | None) -> tuple[int, str] | None:
    """A page cursor ``SCORE:BATCH_ID`` (score: the index's ms of the last row shown)."""
    if not raw:
        return None
    score, sep, bid = raw.partition(":")
    if not sep or not score.isdigit() or not bid:
        raise ValueError(f"bad cursor {raw!r}")
    return int(score), bid


def _wanted(bid: str, topic: str | None, q: str | None) -> bool:
    return (not topic or topic_of_batch(bid) == topic) and (not q or q.lower() in bid.lower())


async def batch_page(
    store: BatchStore,
    *,
    state: str | None = None,
    topic: str | None = None,
    q: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
    scan_max: int = 5000,
) -> dict[str, Any]:
    """One page of batches, newest first, filtered by state, topic and a batch id substring.

    Reads the batch index (``bf:batches``; ``bf:dead`` for state=dead) from the cursor on, in chunks,
    and at most ``scan_max`` index entries per call: ``next_cursor`` continues where this page stopped
    (None at the end of the index).  Rows are those of ``inspect batches --json``."""
    source = store.dead_index_page if state == "dead" else store.batch_index_page
    before = _cursor(cursor)
    now_ms = await store.server_time_ms()
    rows: list[dict[str, Any]] = []
    scanned = 0
    while len(rows) < limit and scanned < scan_max:
        want = min(_SCAN_CHUNK, scan_max - scanned)
        chunk = await source(before=before, count=want)
        scanned += len(chunk)
        full = await _fill(store, rows, chunk, (state, topic, q), limit, now_ms)
        if full is not None:
            before = full
        elif len(chunk) < want:
            return {"rows": rows, "next_cursor": None, "scanned": scanned}
        else:
            before = chunk[-1][1], chunk[-1][0]
    return {"rows": rows, "next_cursor": f"{before[0]}:{before[1]}" if before else None, "scanned": scanned}


async def _fill(
    store: BatchStore,
    rows: list[dict[str, Any]],
    chunk: list[tuple[str, int]],
    filters: tuple[str | None, str | None, str | None],
    limit: int,
    now_ms: int,
) -> tuple[int, str] | None:
    """Append the chunk's batches that pass the filters; the cursor of the row that filled the page."""
    state, topic, q = filters
    score = dict(chunk)
    for row in await store.progress([bid for bid, _ in chunk if _wanted(bid, topic, q)]):
        if state and row.get("state") != state:
            continue
        rows.append(_progress_row(row, now_ms))
        if len(rows) >= limit:
            return score[row["batch_id"]], row["batch_id"]
    return None


async def dead_page(store: BatchStore, *, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
    """Dead-lettered batches, most recently given up first, as ``inspect dead --json`` rows."""
    chunk = await store.dead_index_page(before=_cursor(cursor), count=limit)
    metas = await store.batch_metas([bid for bid, _ in chunk], ["topic", "upload_failures", "last_error"])
    rows = [
        {
            "batch_id": bid,
            "topic": (meta or {}).get("topic", topic_of_batch(bid)),
            "dead_ms": dead_ms,
            "upload_failures": int((meta or {}).get("upload_failures", 0)),
            "last_error": (meta or {}).get("last_error", ""),
        }
        for (bid, dead_ms), meta in zip(chunk, metas, strict=True)
    ]
    last = chunk[-1] if len(chunk) == limit else None
    return {"rows": rows, "next_cursor": f"{last[1]}:{last[0]}" if last else None, "total": await store.dead_count()}


async def quarantine_page(store: BatchStore, *, offset: int = 0, limit: int = 50) -> list[dict[str, Any]]:
    """Quarantined messages, newest first, from ``offset``: ``inspect quarantine --json`` rows."""
    return [_entry(raw) for raw in await store.quarantined_page(offset=offset, count=limit)]


async def quarantine_entry(store: BatchStore, message_id: str) -> dict[str, Any] | None:
    """One quarantined message with all of its stored value (up to 64 KiB) as text."""
    raw = await store.quarantined_entry(message_id)
    if raw is None:
        return None
    entry = _entry(raw | {"id": message_id.encode()})
    value = raw.get("value", b"")
    entry["value"] = value.decode("utf-8", errors="replace")
    entry["stored_bytes"] = len(value)
    entry["truncated"] = entry["size"] > len(value)
    return entry
