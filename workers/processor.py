"""Load the user's station processor and run it within a time budget.

Contract: ``process(station_id: str, records: list[dict]) -> dict | None``, sync or async.
- a dict       -> ok      (must be JSON-encodable with string keys, at most max_result_bytes)
- None         -> empty   ("no output")
- anything else, an exception, or running past the budget -> failed, with the error text kept.

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
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from batchfleet.errors import ProcessorLoadError
from batchfleet.importing import check_call, load_callable
from batchfleet.models import Outcome

__all__ = ["Processor", "abandoned_threads", "load_processor", "run_processor"]

_ERROR_LIMIT = 2000


class Processor(Protocol):
    def __call__(self, station_id: str, records: list[dict[str, Any]], /) -> Any: ...


# The processor's arguments, as the Protocol above states them (without ``self``).
_ARGUMENTS = [p.name for p in inspect.signature(Processor.__call__).parameters.values()][1:]


def load_processor(ref: str) -> Processor:
    """The station processor named by ``BATCHFLEET_PROCESSOR``, checked against :class:`Processor`
    when it is loaded (a wrong signature would otherwise fail every station with a TypeError)."""
    if not ref.strip():
        raise ProcessorLoadError(
            "BATCHFLEET_PROCESSOR is not set: name your station processor as module:function, "
            "e.g. mypkg.stations:process (README, 'Station processors')"
        )
    try:
        fn = load_callable(ref)
        check_call(fn, ref, f"process({', '.join(_ARGUMENTS)})", len(_ARGUMENTS))
    except ProcessorLoadError as exc:
        raise ProcessorLoadError(f"BATCHFLEET_PROCESSOR={ref.strip()!r}: {exc}") from exc
    return fn


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


async def _call(fn: Callable[..., Any], station_id: str, records: list[dict[str, Any]]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(station_id, records)
    result = _on_thread(fn, station_id, records)
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


def _error_text(exc: BaseException) -> str:
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


def _classify(value: Any, max_result_bytes: int) -> tuple[str, dict[str, Any] | None, str | None]:
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
) -> Outcome:
    """Run one station and classify what happened.  Never raises for the processor's faults."""
    started = time.perf_counter()
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(budget_s):  # no extra task per station, unlike wait_for
            value = await _call(fn, station_id, records)
    except TimeoutError:
        status, result, error = "failed", None, f"timeout: no result within the {budget_s:g}s station budget"
    except Exception as exc:
        status, result, error = "failed", None, _error_text(exc)
    else:
        status, result, error = _classify(value, max_result_bytes)
    duration_ms = (time.perf_counter() - started) * 1000
    return Outcome(status=status, result=result, error=error, duration_ms=duration_ms, worker=worker, attempt=attempt)  # type: ignore[arg-type]
