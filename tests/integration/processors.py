"""Station processors for the tests: behaviour chosen by the station id's prefix."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any


def _result(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"stationId": station_id, "n": len(records), "values": [r.get("v") for r in records]}


_CANNED: dict[str, Any] = {"LIST": [1, 2, 3], "HUGE": {"blob": "x" * 2_000_000}}
# SLOW: a result after a 0.6 s deadline or a 0.3 s quorum grace even when a loaded machine finalizes 2 s late
_SLEEPS = {"LONG": 6.0, "W": 0.05, "SLOW": 3.0, "HANG": 3600.0}


async def async_process(station_id: str, records: list[dict[str, Any]]) -> Any:
    kind = station_id.split("-", 1)[0]
    if kind == "RAISE":
        raise ValueError(f"bad reading at {station_id}")
    if kind == "NONE":
        return None
    if kind == "CRASH":  # takes the whole worker process down, every time
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "HOSTS":  # HOSTS-<ms>-...: the partition test; says which worker process ran it, and when
        await asyncio.sleep(int(station_id.split("-")[1]) / 1000)
        return {**_result(station_id, records), "pid": os.getpid(), "done_at": time.time()}
    if kind == "CRASHLATE":  # the same, once the quick stations of its group are recorded
        await asyncio.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "STAMP":  # when it ran: stations of one group run at the same time
        started = time.time()
        await asyncio.sleep(0.5)
        return {"stationId": station_id, "start": started, "end": time.time()}
    if kind in _SLEEPS:
        await asyncio.sleep(_SLEEPS[kind])
    if kind == "NONJSON":
        return {"when": object()}
    return _CANNED.get(kind, _result(station_id, records))


# Hung sync processors stop once a test sets this, so no thread outlives its test.
release = threading.Event()


def sync_process(station_id: str, records: list[dict[str, Any]]) -> Any:
    kind = station_id.split("-", 1)[0]
    if kind == "SPIN":  # burns CPU, never returns within the budget
        end = time.monotonic() + 3600
        while time.monotonic() < end and not release.is_set():
            pass
    if kind == "BLOCK":  # blocks in a syscall, never returns within the budget
        release.wait(3600)
    if kind == "RAISE":
        raise RuntimeError(f"sync failure at {station_id}")
    if kind == "STAMP":  # when it ran: sync stations of one group run on their own threads at once
        started = time.time()
        time.sleep(0.5)
        return {"stationId": station_id, "start": started, "end": time.time()}
    if kind == "NONE":
        return None
    if kind == "LIST":
        return [1, 2]
    return _result(station_id, records)
