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


def burn(seconds: float) -> None:
    """CPU-bound work (holds the GIL) for about ``seconds`` of CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def cpu_process(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A CPU-bound station of ~20 ms: says which worker process ran it, and when."""
    started = time.time()
    burn(0.02)
    return {"stationId": station_id, "pid": os.getpid(), "start": started, "end": time.time()}


class GroupModel:
    """A model processor: set up once (counted), group calls (each station's outcome by its prefix),
    ``process`` for the one-by-one fallback.  A group holding RAISEGROUP-* raises as a whole (only that
    station raises on its own); one holding HANGGROUP-* never returns within its budget."""

    setups = 0
    calls: list[list[str]] = []  # the stations of each process_group call, in order
    singles: list[str] = []  # the stations of each process call

    def setup(self) -> None:
        type(self).setups += 1

    def process(self, station_id: str, records: list[dict[str, Any]]) -> Any:
        type(self).singles.append(station_id)
        if station_id.startswith("RAISEGROUP"):
            raise RuntimeError(f"bad input at {station_id}")
        return {"stationId": station_id, "n": len(records), "setups": type(self).setups, "pid": os.getpid()}

    def process_group(self, stations: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        type(self).calls.append(sorted(stations))
        if any(s.startswith("HANGGROUP") for s in stations):
            release.wait(3600)
        if any(s.startswith("RAISEGROUP") for s in stations):
            raise RuntimeError("the group call failed")
        out: dict[str, Any] = {}
        for station_id, records in stations.items():
            kind = station_id.split("-", 1)[0]
            if kind == "MISSING":
                continue
            out[station_id] = {
                "NONE": None,
                "ERR": ValueError(f"no model input for {station_id}"),
                "LIST": [1, 2],
            }.get(kind, {"stationId": station_id, "n": len(records), "group": len(stations), "setups": type(self).setups})
        return out


class SlowSetupModel:
    """Set-up takes until the file named by TEST_SETUP_GATE exists (health waits for it)."""

    def setup(self) -> None:
        gate = os.environ.get("TEST_SETUP_GATE", "")
        if gate:
            open(f"{gate}.started", "w").close()
        while gate and not os.path.exists(gate):
            time.sleep(0.05)

    def process(self, station_id: str, records: list[dict[str, Any]]) -> Any:
        return {"stationId": station_id, "pid": os.getpid()}


class FailingSetupModel:
    def setup(self) -> None:
        raise OSError("weights.bin: no such file\n(while loading the model)")

    def process(self, station_id: str, records: list[dict[str, Any]]) -> Any:
        return None
