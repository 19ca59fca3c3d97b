"""Upload payload building and the station processor runner (no servers)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from batchfleet.aggregator.payload import build_payload
from batchfleet.models import Claim, Outcome
from batchfleet.workers.processor import abandoned_threads, run_processor

# -- build_payload -------------------------------------------------------------------------------


def claim(
    stations: list[str],
    outcomes: dict[str, Outcome],
    *,
    now_ms: int = 1_700_000_009_999,
    **meta: str,
) -> Claim:
    base = {"topic": "SCHEDULE-STATION-REALTIME-DATA", "created_ms": "1700000000123"}
    return Claim(
        batch_id="SCHEDULE-STATION-REALTIME-DATA:0:12345",
        token="7",
        now_ms=now_ms,
        meta={**base, **meta},
        outcomes=outcomes,
        payload=None,
        stations=stations,
    )


def test_payload_orders_results_by_expected_stations_and_classifies_the_rest() -> None:
    outcomes = {
        "s3": Outcome("ok", result={"station": "s3", "v": 3}),
        "s1": Outcome("ok", result={"station": "s1", "v": 1}),
        "s2": Outcome("failed", error="ValueError: boom"),
        "s4": Outcome("empty"),
        "s6": Outcome("ok", result=None),  # ok without a result is not a result
        "s7": Outcome("failed"),
        "not-expected": Outcome("ok", result={"station": "not-expected"}),
    }
    stations = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    payload = build_payload(claim(stations, outcomes, reason="quorum", finalized_ms="1700000005000", late="2"))
    assert payload.batch_id == "SCHEDULE-STATION-REALTIME-DATA:0:12345"
    assert payload.topic == "SCHEDULE-STATION-REALTIME-DATA"
    assert payload.results == [{"station": "s1", "v": 1}, {"station": "s3", "v": 3}]
    assert payload.failed == {"s2": "ValueError: boom", "s6": "failed", "s7": "failed"}
    assert list(payload.failed) == ["s2", "s6", "s7"]
    assert payload.empty == ["s4"]
    assert payload.missing == ["s5"]
    assert payload.reason == "quorum"
    assert payload.created_at == pytest.approx(1_700_000_000.123)
    assert payload.finalized_at == pytest.approx(1_700_000_005.0)
    s = payload.summary
    assert (s.expected, s.ok, s.failed, s.empty, s.missing, s.late) == (7, 2, 3, 1, 1, 2)
    assert s.ok + s.failed + s.empty + s.missing == s.expected


def test_payload_all_ok_has_empty_lists() -> None:
    outcomes = {f"s{i}": Outcome("ok", result={"i": i}) for i in range(3)}
    payload = build_payload(claim(["s2", "s0", "s1"], outcomes, reason="complete"))
    assert payload.results == [{"i": 2}, {"i": 0}, {"i": 1}]
    assert payload.failed == {}
    assert payload.empty == []
    assert payload.missing == []
    assert payload.reason == "complete"
    assert payload.summary.model_dump() == {"expected": 3, "ok": 3, "failed": 0, "empty": 0, "missing": 0, "late": 0}


def test_payload_nothing_arrived_is_all_missing_and_defaults_apply() -> None:
    payload = build_payload(claim(["a", "b"], {}, now_ms=1_700_000_007_500))
    assert payload.results == []
    assert payload.missing == ["a", "b"]
    assert payload.reason == "deadline"  # no reason recorded
    assert payload.finalized_at == pytest.approx(1_700_000_007.5)  # no finalized_ms: claim time
    assert payload.summary.missing == 2
    assert payload.summary.late == 0


def test_payload_serialises_to_the_documented_fields() -> None:
    payload = build_payload(claim(["a"], {"a": Outcome("empty")}, reason="complete", finalized_ms="1700000001000"))
    data = payload.model_dump()
    assert set(data) == {
        "batch_id",
        "topic",
        "created_at",
        "finalized_at",
        "reason",
        "results",
        "summary",
        "failed",
        "empty",
        "missing",
    }
    assert data["empty"] == ["a"]


# -- run_processor -------------------------------------------------------------------------------

RECORDS = [{"stationId": "s1", "v": 1}]


async def run(fn: Callable[..., Any], *, budget_s: float = 2.0, max_result_bytes: int = 10_000) -> Outcome:
    return await run_processor(fn, "s1", RECORDS, budget_s=budget_s, max_result_bytes=max_result_bytes, worker="w1")


async def test_async_processor_returning_dict_is_ok() -> None:
    async def process(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"station": station_id, "n": len(records), "pair": (1, 2)}

    outcome = await run(process)
    assert outcome.status == "ok"
    assert outcome.result == {"station": "s1", "n": 1, "pair": [1, 2]}  # normalised to JSON
    assert outcome.error is None
    assert outcome.worker == "w1"
    assert outcome.duration_ms >= 0


async def test_sync_processor_returning_dict_is_ok_and_runs_off_the_loop_thread() -> None:
    seen: list[threading.Thread] = []

    def process(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        seen.append(threading.current_thread())
        return {"station": station_id, "sum": sum(r["v"] for r in records)}

    outcome = await run(process)
    assert outcome.status == "ok"
    assert outcome.result == {"station": "s1", "sum": 1}
    assert seen and seen[0] is not threading.current_thread()


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_processor_returning_none_is_empty(is_async: bool) -> None:
    async def aprocess(station_id: str, records: list[dict[str, Any]]) -> None:
        return None

    def process(station_id: str, records: list[dict[str, Any]]) -> None:
        return None

    outcome = await run(aprocess if is_async else process)
    assert outcome.status == "empty"
    assert outcome.result is None
    assert outcome.error is None


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_processor_raising_is_failed_with_type_and_message(is_async: bool) -> None:
    async def aprocess(station_id: str, records: list[dict[str, Any]]) -> None:
        raise KeyError(f"no calibration for {station_id}")

    def process(station_id: str, records: list[dict[str, Any]]) -> None:
        raise ZeroDivisionError("division by zero in s1")

    outcome = await run(aprocess if is_async else process)
    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error is not None
    if is_async:
        assert outcome.error.startswith("KeyError:")
        assert "no calibration for s1" in outcome.error
    else:
        assert outcome.error == "ZeroDivisionError: division by zero in s1"


async def test_long_error_text_is_truncated() -> None:
    async def process(station_id: str, records: list[dict[str, Any]]) -> None:
        raise RuntimeError("x" * 10_000)

    outcome = await run(process)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.startswith("RuntimeError: xxx")
    assert len(outcome.error) <= 2000
    assert outcome.error.endswith("...")


@pytest.mark.parametrize(
    ("value", "type_name"),
    [([{"a": 1}], "list"), ("text", "str"), (42, "int"), ((1, 2), "tuple"), (True, "bool")],
)
async def test_processor_returning_non_dict_is_failed(value: Any, type_name: str) -> None:
    async def process(station_id: str, records: list[dict[str, Any]]) -> Any:
        return value

    outcome = await run(process)
    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error == f"processor returned {type_name}, expected dict or None"


class Opaque:
    pass


@pytest.mark.parametrize(
    "result",
    [{"tags": {"a", "b"}}, {"obj": Opaque()}, {1: "int key"}, {"big": 2**70}, {"nested": [{"x": b"bytes"}]}],
    ids=["set", "object", "int-key", "int-over-64-bits", "bytes"],
)
async def test_non_json_result_is_failed(result: dict[Any, Any]) -> None:
    async def process(station_id: str, records: list[dict[str, Any]]) -> dict[Any, Any]:
        return result

    outcome = await run(process)
    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error is not None
    assert "not JSON-encodable" in outcome.error


async def test_result_over_max_bytes_is_failed() -> None:
    async def process(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"blob": "x" * 5000}

    outcome = await run(process, max_result_bytes=1000)
    assert outcome.status == "failed"
    assert outcome.result is None
    assert outcome.error is not None
    assert "bytes" in outcome.error
    assert "1000-byte limit" in outcome.error
    assert "5011 bytes" in outcome.error  # len(b'{"blob":"' + 5000 * b"x" + b'"}')


async def test_result_of_exactly_max_bytes_is_ok() -> None:
    async def process(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"blob": "x" * 5000}

    outcome = await run(process, max_result_bytes=5011)
    assert outcome.status == "ok"


async def test_async_processor_past_budget_times_out() -> None:
    async def process(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    started = time.perf_counter()
    outcome = await run(process, budget_s=0.2)
    elapsed = time.perf_counter() - started
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "timeout" in outcome.error
    assert "0.2s" in outcome.error
    assert 0.15 <= elapsed < 2.0
    assert outcome.duration_ms >= 150


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _spin(stop: threading.Event, started: threading.Event) -> Callable[[str, list[dict[str, Any]]], Any]:
    def process(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        started.set()
        n = 0
        while not stop.is_set():
            n += 1  # pure CPU, holds the GIL between switch intervals
        return {"n": n}

    return process


def _sleeper(stop: threading.Event, started: threading.Event) -> Callable[[str, list[dict[str, Any]]], Any]:
    def process(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        started.set()
        while not stop.is_set():
            time.sleep(0.01)  # blocking sleep, as a careless sync processor would do
        return {"slept": True}

    return process


@pytest.mark.parametrize("make", [_spin, _sleeper], ids=["cpu-spin", "time-sleep"])
async def test_sync_processor_past_budget_times_out_and_loop_stays_responsive(
    make: Callable[[threading.Event, threading.Event], Callable[..., Any]],
) -> None:
    stop = threading.Event()
    started = threading.Event()
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.01)
            ticks.append(time.perf_counter())

    def alive() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "station-processor"]

    before_abandoned = abandoned_threads()
    budget_s = 0.5
    task = asyncio.create_task(ticker())
    try:
        t0 = time.perf_counter()
        outcome: Outcome = await run(make(stop, started), budget_s=budget_s)
        t1 = time.perf_counter()
        assert started.is_set()
        assert abandoned_threads() == before_abandoned + 1  # the overrunning thread is counted
        assert alive(), "the processor thread should still be running until told to stop"
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "timeout" in outcome.error
    assert budget_s * 0.9 <= t1 - t0 < budget_s + 1.5
    during = [t for t in ticks if t0 <= t <= t1]
    # a 10 ms ticker over a 0.5 s budget: about 50 ticks when the loop is free; demand a fair share
    assert len(during) >= 10, f"event loop starved: only {len(during)} ticks in {t1 - t0:.2f}s"
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < 0.25, f"event loop blocked for {max(gaps):.3f}s"

    # once stopped, the thread ends and is no longer counted as abandoned
    assert await _wait_for(lambda: not alive()), "processor thread did not stop"
    assert await _wait_for(lambda: abandoned_threads() == before_abandoned)


async def test_sync_timeout_does_not_hold_up_other_stations() -> None:
    stop = threading.Event()
    started = threading.Event()

    async def quick(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"quick": station_id}

    try:
        slow_task = asyncio.create_task(run(_spin(stop, started), budget_s=0.4))
        t0 = time.perf_counter()
        quick_outcomes = await asyncio.gather(*(run(quick) for _ in range(5)))
        quick_elapsed = time.perf_counter() - t0
        slow = await slow_task
    finally:
        stop.set()
    assert all(o.status == "ok" for o in quick_outcomes)
    assert quick_elapsed < 0.35
    assert slow.status == "failed" and slow.error is not None and "timeout" in slow.error
    assert await _wait_for(lambda: not [t for t in threading.enumerate() if t.name == "station-processor"])


# -- keys: one hash tag per batch ----------------------------------------------------------------
