"""Run stations of one batch concurrently and record each one as soon as it is done.

A model with ``process_group`` (workers/model.py) gets a job's stations in one call, within the station
budget (a group call is one call: it gets what one station gets, so ``BATCHFLEET_STATIONS_PER_JOB``
should be sized so a group call fits it).  Its outcomes are classified as one-station calls' are and
recorded in one call.  A group call that raises (or returns no mapping) says nothing about which
station is at fault: its stations are then run one by one (``process``, else ``process_group`` with
one station each), so the culprit fails alone.  A group call past its budget fails all its stations
with a timeout (running them again one by one could take the group's budget once per station); a
station missing from the returned mapping fails with "no outcome returned".

Every station gets its own asyncio task (a sync processor its own thread, see workers/processor.py),
its own time budget and its own outcome; a station that hangs, raises or returns garbage changes only
its own outcome.  Recording does not wait for the group: whatever finished by the time the group looks
(everything that finished in the same event-loop step, or while the previous record call was on the
wire) goes to Redis in one ``record_outcome.lua`` call.  So a group of no-op stations costs one record
call, and the station that completes a batch is recorded in the step after it finished, never held
back by slower stations of its group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from batchfleet import metrics
from batchfleet.models import Outcome, RecordedOutcomes
from batchfleet.workers.processor import GroupCallError, run_group_call, run_processor
from batchfleet.workers.slots import Ticket
from batchfleet.workers.station import WorkerState, record

__all__ = ["run_stations"]

log = logging.getLogger(__name__)
# With a concurrency limit a job's stations finish one by one: an outcome waits up to this long for
# the next ones of its job to share one record call (a record call costs the worker ~0.2-0.3 ms of CPU).
RECORD_LINGER_S = 0.02


@functools.cache
def _stations(topic: str, status: str) -> Any:
    return metrics.STATIONS.labels(topic, status)  # cached: .labels() costs a lock and a lookup per call


@functools.cache
def _station_seconds(status: str) -> Any:
    return metrics.STATION_SECONDS.labels(status)


@functools.cache
def _late(topic: str) -> Any:
    return metrics.LATE_RESULTS.labels(topic)


async def run_stations(
    state: WorkerState,
    batch_id: str,
    topic: str,
    stations: Mapping[str, list[dict[str, Any]]],
    *,
    budget_s: float,
    attempt: int,
    incarnation: str = "",
) -> Counter[str]:
    """Run the stations, record each outcome (at most once, first wins, into the batch's ``incarnation``)
    as soon as it is done; returns how each record went (recorded, duplicate, late, unknown, stale).  A
    model with ``process_group`` gets them in one call; otherwise (or when that call raises) each station is a call of its own, all
    started at once and each holding a slot of ``state.slots`` while it runs.  Cancelled (the job's
    timeout, a shutdown), it cancels the calls still running: their stations stay without an outcome."""
    tally: Counter[str] = Counter()
    state.running.update(f"{batch_id}/{station_id}" for station_id in stations)
    try:
        group = state.processor.group
        if group is not None:
            try:
                finished = await _group_call(state, group, stations, budget_s=budget_s, attempt=attempt)
            except GroupCallError as exc:
                log.warning(
                    "batch %s: the group call of %d station(s) failed (%s); running them one by one",
                    batch_id,
                    len(stations),
                    exc,
                    extra={"batch_id": batch_id, "topic": topic},
                )
            else:
                await _record(state, (batch_id, incarnation), topic, finished, tally)
                return tally
        await _one_by_one(state, (batch_id, incarnation), topic, stations, budget_s=budget_s, attempt=attempt, tally=tally)
    finally:
        state.running.difference_update(f"{batch_id}/{station_id}" for station_id in stations)
    return tally


async def _group_call(
    state: WorkerState, group: Any, stations: Mapping[str, list[dict[str, Any]]], *, budget_s: float, attempt: int
) -> list[tuple[str, Outcome]]:
    ticket = state.slots.reserve(1)
    options: dict[str, Any] = {"budget_s": budget_s, "max_result_bytes": state.settings.max_result_bytes}
    options |= {"worker": state.name, "attempt": attempt}
    try:
        if _on_runners(state, group):
            async with _runner_slot(state, ticket) as on_start:
                outcomes = await run_group_call(group, stations, runners=state.runners, on_start=on_start, **options)
        else:
            async with state.slots.hold(ticket):
                outcomes = await run_group_call(group, stations, **options)
    finally:
        state.slots.done(ticket)
    return list(outcomes.items())


def _on_runners(state: WorkerState, fn: Any) -> bool:
    return state.runners is not None and not inspect.iscoroutinefunction(fn)


@contextlib.asynccontextmanager
async def _runner_slot(state: WorkerState, ticket: Ticket) -> AsyncIterator[Callable[[], None]]:
    """A call queued for the runner threads: it counts as running from when a runner takes it."""
    begun = False

    def on_start() -> None:
        nonlocal begun
        begun = True
        state.slots.begin(ticket)

    try:
        yield on_start
    finally:
        if begun:
            state.slots.end()


async def _one_by_one(
    state: WorkerState,
    batch: tuple[str, str],
    topic: str,
    stations: Mapping[str, list[dict[str, Any]]],
    *,
    budget_s: float,
    attempt: int,
    tally: Counter[str],
) -> None:
    fn = state.processor.station_fn()
    ticket = state.slots.reserve(len(stations))

    options: dict[str, Any] = {"budget_s": budget_s, "max_result_bytes": state.settings.max_result_bytes}
    options |= {"worker": state.name, "attempt": attempt}
    runners = _on_runners(state, fn)

    async def one(station_id: str, records: list[dict[str, Any]]) -> Outcome:
        if runners:  # queued for the runner threads at once: each starts as soon as one is free
            async with _runner_slot(state, ticket) as on_start:
                return await run_processor(fn, station_id, records, runners=state.runners, on_start=on_start, **options)
        async with state.slots.hold(ticket):  # the budget and the duration start with the slot
            return await run_processor(fn, station_id, records, **options)

    tasks = {asyncio.create_task(one(station_id, records)): station_id for station_id, records in stations.items()}
    pending: set[asyncio.Task[Outcome]] = set(tasks)
    linger_s = RECORD_LINGER_S if state.slots.size else 0.0
    buffer: list[tuple[str, Outcome]] = []
    since = 0.0
    loop = asyncio.get_running_loop()
    try:
        while pending:
            timeout = max(since + linger_s - loop.time(), 0) if buffer else None
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if done and not buffer:
                since = loop.time()
            buffer += [(tasks[task], task.result()) for task in done]
            if buffer and (not pending or loop.time() >= since + linger_s):
                finished, buffer = buffer, []
                await _record(state, batch, topic, finished, tally)
    finally:
        for task in pending:
            task.cancel()
        state.slots.done(ticket)


async def _record(
    state: WorkerState, batch: tuple[str, str], topic: str, finished: list[tuple[str, Outcome]], tally: Counter[str]
) -> None:
    """Record outcomes of ``batch`` (its id and the incarnation the job belongs to)."""
    batch_id, incarnation = batch
    rec = await record(state, batch_id, finished, incarnation)
    _account(state, batch_id, topic, finished, rec, tally)
    state.running.difference_update(f"{batch_id}/{station_id}" for station_id, _ in finished)
    state.done += len(finished)


def _account(
    state: WorkerState,
    batch_id: str,
    topic: str,
    finished: list[tuple[str, Outcome]],
    rec: RecordedOutcomes,
    tally: Counter[str],
) -> None:
    """Metrics and log lines of one record call: one line per call, one more per failed station."""
    recorded: Counter[str] = Counter()
    for index, (station_id, outcome) in enumerate(finished):
        status = rec.status(index)
        tally[status] += 1
        _station_seconds(outcome.status).observe(outcome.duration_ms / 1000)
        if status == "recorded":
            recorded[outcome.status] += 1
            if outcome.status == "failed":
                log.warning(
                    "batch %s: station %s failed: %s",
                    batch_id,
                    station_id,
                    outcome.error,
                    extra={"batch_id": batch_id, "station_id": station_id, "topic": topic},
                )
    for outcome_status, count in recorded.items():
        _stations(topic, outcome_status).inc(count)
    late = rec.count("late")
    if late:
        state.saw_finalized(batch_id)
        _late(topic).inc(late)
    _log_recorded(batch_id, topic, finished, rec, recorded)


def _log_recorded(
    batch_id: str, topic: str, finished: list[tuple[str, Outcome]], rec: RecordedOutcomes, recorded: Counter[str]
) -> None:
    extra = {"batch_id": batch_id, "topic": topic}
    if recorded:
        if log.isEnabledFor(logging.INFO):
            counts = " ".join(f"{status}={recorded[status]}" for status in ("ok", "failed", "empty") if recorded[status])
            log.info("batch %s: %s recorded, progress %d/%d", batch_id, counts, rec.done, rec.expected, extra=extra)
        if rec.event == "complete":
            log.info("batch %s: all %d stations done, upload triggered", batch_id, rec.expected, extra=extra)
        elif rec.event == "quorum":
            log.info("batch %s: quorum reached with %d/%d stations", batch_id, rec.done, rec.expected, extra=extra)
    others = [(station_id, rec.status(i)) for i, (station_id, _) in enumerate(finished) if rec.codes[i] != "r"]
    if not others:
        return
    late = [station_id for station_id, status in others if status == "late"]
    if late:
        log.warning(
            "batch %s: %d station result(s) arrived after finalization (late, not uploaded): %s",
            batch_id,
            len(late),
            _some(late),
            extra=extra,
        )
    stale = [station_id for station_id, status in others if status == "stale"]
    if stale:
        log.warning(
            "batch %s: %d outcome(s) of an earlier incarnation not recorded (redis lost the batch and it was created"
            " again; the new incarnation runs its stations itself): %s",
            batch_id,
            len(stale),
            _some(stale),
            extra=extra,
        )
    ignored = [f"{station_id} ({status})" for station_id, status in others if status not in ("late", "stale")]
    if ignored:
        log.info("batch %s: outcome ignored for %s", batch_id, _some(ignored), extra=extra)


def _some(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
