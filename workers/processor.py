"""Load the user's station processor and run it within a time budget.

Contract: ``process(station_id: str, records: list[dict]) -> dict | None``, sync or async.
- a dict       -> ok      (must be JSON-encodable with string keys, at most max_result_bytes)
- None         -> empty   ("no output")
- anything else, an exception, or running past the budget -> failed, with the error text kept.

``BATCHFLEET_PROCESSOR`` may also name a class or a zero-argument factory: a *model processor*
(workers/model.py: its life cycle, ``setup``/``teardown``, and group calls, ``process_group``).

Sync processors run on their own daemon thread, so a hung or CPU-spinning function costs its station
only: the event loop keeps serving other jobs and the abandoned thread is counted.  An async
processor must not block the event loop (that is the one thing the worker cannot protect against).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from batchfleet.errors import ProcessorLoadError
from batchfleet.importing import check_call, load_callable
from batchfleet.models import Outcome
from batchfleet.workers.model import LoadedProcessor, model_processor
from batchfleet.workers.runners import Runners

__all__ = [
    "GroupCallError",
    "LoadedProcessor",
    "Processor",
    "abandoned_threads",
    "call_processor",
    "classify",
    "error_text",
    "invoke",
    "load_processor",
    "make_runners",
    "run_group_call",
    "run_processor",
]

_ERROR_LIMIT = 2000


class Processor(Protocol):
    def __call__(self, station_id: str, records: list[dict[str, Any]], /) -> Any: ...


# The processor's arguments, as the Protocol above states them (without ``self``).
_ARGUMENTS = [p.name for p in inspect.signature(Processor.__call__).parameters.values()][1:]


def load_processor(ref: str) -> LoadedProcessor:
    """The station processor named by ``BATCHFLEET_PROCESSOR``, checked against :class:`Processor`
    when it is loaded (a wrong signature would otherwise fail every station with a TypeError), or the
    model processor a class or zero-argument factory of that name makes (not set up yet)."""
    if not ref.strip():
        raise ProcessorLoadError(
            "BATCHFLEET_PROCESSOR is not set: name your station processor as module:function, "
            "e.g. mypkg.stations:process (README, 'Station processors')"
        )
    try:
        fn = load_callable(ref)
        if _is_factory(fn):
            return model_processor(fn, ref.strip())
        check_call(fn, ref, f"process({', '.join(_ARGUMENTS)})", len(_ARGUMENTS))
    except ProcessorLoadError as exc:
        raise ProcessorLoadError(f"BATCHFLEET_PROCESSOR={ref.strip()!r}: {exc}") from exc
    return LoadedProcessor(ref=ref.strip(), one=fn)


def _is_factory(fn: Callable[..., Any]) -> bool:
    """A class, or a function without parameters (a factory): not a plain station function."""
    if inspect.isclass(fn):
        return True
    try:
        return not inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_abandoned = 0
_abandoned_lock = threading.Lock()


def abandoned_threads() -> int:
    """Sync processor threads that overran their budget and are still running."""
    return _abandoned


def _on_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        global _abandoned
        try:
            outcome: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:
            outcome = (False, exc)
        if future.cancelled():
            with _abandoned_lock:
                _abandoned -= 1
            return
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # loop closed
            pass

    threading.Thread(target=target, name="station-processor", daemon=True).start()
    return future


async def call_processor(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)``: awaited when it is a coroutine function, else on a thread of its own (an
    awaitable it returns is awaited too).  Cancelled, a thread still running is counted as abandoned."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = _on_thread(fn, *args)
    try:
        value = await asyncio.shield(result)
    except asyncio.CancelledError:
        global _abandoned
        if not result.done():
            result.cancel()
            with _abandoned_lock:
                _abandoned += 1
        raise
    if inspect.isawaitable(value):
        return await value
    return value


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 3] + "..."


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def classify(value: Any, max_result_bytes: int) -> tuple[str, dict[str, Any] | None, str | None]:
    if value is None:
        return "empty", None, None
    if not isinstance(value, dict):
        return "failed", None, f"processor returned {type(value).__name__}, expected dict or None"
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:
        return "failed", None, f"result is not JSON-encodable: {exc}"
    if b"null" in encoded and _has_non_finite(value):
        return "failed", None, "result contains NaN or Infinity, which JSON cannot carry"
    if len(encoded) > max_result_bytes:
        return "failed", None, f"result is {len(encoded)} bytes, over the {max_result_bytes}-byte limit"
    return "ok", orjson.loads(encoded), None


async def run_processor(
    fn: Processor,
    station_id: str,
    records: list[dict[str, Any]],
    *,
    budget_s: float,
    max_result_bytes: int,
    worker: str = "",
    attempt: int = 1,
    runners: Runners | None = None,
    on_start: Callable[[], None] | None = None,
) -> Outcome:
    """Run one station and classify what happened.  Never raises for the processor's faults.
    ``runners``: a sync ``fn`` runs on one of them (``on_start`` is called when it starts)."""
    kind, value, took_s = await invoke(fn, (station_id, records), budget_s=budget_s, runners=runners, on_start=on_start)
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    if kind == "timeout":
        status, result, error = "failed", None, f"timeout: no result within the {budget_s:g}s station budget"
    elif kind == "error":
        status, result, error = "failed", None, error_text(value)
    else:
        status, result, error = classify(value, max_result_bytes)
    return Outcome(status=status, result=result, error=error, duration_ms=took_s * 1000, worker=worker, attempt=attempt)  # type: ignore[arg-type]


async def invoke(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    budget_s: float,
    runners: Runners | None = None,
    on_start: Callable[[], None] | None = None,
) -> tuple[str, Any, float]:
    """Call ``fn(*args)`` within ``budget_s``: ("ok", value, seconds), ("error", exception, seconds) or
    ("timeout", None, seconds).  A sync ``fn`` runs on ``runners`` when given, else on a thread of its own."""
    if runners is not None and not inspect.iscoroutinefunction(fn):
        return await _on_runner(runners, fn, args, budget_s, on_start)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(budget_s):  # no extra task per station, unlike wait_for
            value = await call_processor(fn, *args)
    except TimeoutError:
        return "timeout", None, time.perf_counter() - started
    except Exception as exc:
        return "error", exc, time.perf_counter() - started
    return "ok", value, time.perf_counter() - started


async def _on_runner(
    runners: Runners, fn: Callable[..., Any], args: tuple[Any, ...], budget_s: float, on_start: Callable[[], None] | None
) -> tuple[str, Any, float]:
    call = runners.submit(fn, *args)
    try:
        started = await asyncio.shield(call.started)
    except asyncio.CancelledError:
        if not call.cancel():  # a runner took it just now
            _abandon(runners, call)
        raise
    if on_start is not None:
        on_start()
    try:
        async with asyncio.timeout(max(budget_s - (time.perf_counter() - started), 0)):
            ok, value, ended = await asyncio.shield(call.result)
    except TimeoutError:
        if _abandon(runners, call):
            return "timeout", None, time.perf_counter() - started
        ok, value, ended = await call.result  # it returned just now
    except asyncio.CancelledError:
        _abandon(runners, call)
        raise
    if ok and inspect.isawaitable(value):
        value = await value
    return ("ok" if ok else "error"), value, ended - started


def _abandon(runners: Runners, call: Any) -> bool:
    global _abandoned
    if not runners.abandon(call):
        return False
    with _abandoned_lock:
        _abandoned += 1
    return True


def _abandoned_ended() -> None:
    global _abandoned
    with _abandoned_lock:
        _abandoned -= 1


def make_runners(size: int) -> Runners:
    """``size`` runner threads for sync calls (BATCHFLEET_WORKER_CONCURRENCY)."""
    return Runners(size, on_abandoned_end=_abandoned_ended)


class GroupCallError(Exception):
    """A group call that raised, or returned something other than a mapping: its stations' outcomes
    are unknown (workers/group.py runs them one by one)."""


async def run_group_call(
    group: Callable[..., Any],
    stations: Mapping[str, list[dict[str, Any]]],
    *,
    budget_s: float,
    max_result_bytes: int,
    worker: str = "",
    attempt: int = 1,
    runners: Runners | None = None,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Outcome]:
    """Run ``process_group`` over the stations within ``budget_s`` and classify each station's outcome
    (as one-station calls are).  Past the budget, every station of the call fails with a timeout; a
    call that raises (or returns no mapping) raises GroupCallError.  Each station's recorded duration
    is the call's."""
    kind, value, took_s = await invoke(group, (dict(stations),), budget_s=budget_s, runners=runners, on_start=on_start)
    if kind == "timeout":
        late = f"timeout: the group call of {len(stations)} station(s) gave no result within its {budget_s:g}s budget"
        failed = Outcome(status="failed", error=late, duration_ms=took_s * 1000, worker=worker, attempt=attempt)
        return dict.fromkeys(stations, failed)
    if kind == "error":
        raise GroupCallError(error_text(value)) from value
    if not isinstance(value, Mapping):
        raise GroupCallError(f"process_group returned {type(value).__name__}, expected a mapping of station -> outcome")
    outcomes: dict[str, Outcome] = {}
    for station_id in stations:
        status, result, error = _group_member(value, station_id, max_result_bytes)
        outcomes[station_id] = Outcome(
            status=status,  # type: ignore[arg-type]
            result=result,
            error=error,
            duration_ms=took_s * 1000,
            worker=worker,
            attempt=attempt,
        )
    return outcomes


def _group_member(
    value: Mapping[str, Any], station_id: str, max_result_bytes: int
) -> tuple[str, dict[str, Any] | None, str | None]:
    if station_id not in value:
        return "failed", None, "no outcome returned for this station by process_group"
    if isinstance(value[station_id], BaseException):
        return "failed", None, error_text(value[station_id])
    return classify(value[station_id], max_result_bytes)
