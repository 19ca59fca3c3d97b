"""Run stations of one batch concurrently and record each one as soon as it is done.

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
import functools
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from batchfleet import metrics
from batchfleet.models import Outcome, RecordedOutcomes
from batchfleet.workers.processor import run_processor
from batchfleet.workers.station import WorkerState, record

__all__ = ["run_stations"]

log = logging.getLogger(__name__)


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
    """Run the stations concurrently, record each outcome (at most once, first wins) as soon as it is
    done; returns how each record went (recorded, duplicate, late, unknown, stale).  Cancelled (the job's
    timeout, a shutdown), it cancels the stations still running: they stay without an outcome."""
    tasks: dict[asyncio.Task[Outcome], str] = {}
    for station_id, records in stations.items():
        coro = run_processor(
            state.processor,
            station_id,
            records,
            budget_s=budget_s,
            max_result_bytes=state.settings.max_result_bytes,
            worker=state.name,
            attempt=attempt,
        )
        tasks[asyncio.create_task(coro)] = station_id
    state.running.update(f"{batch_id}/{station_id}" for station_id in stations)
    tally: Counter[str] = Counter()
    pending: set[asyncio.Task[Outcome]] = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finished = [(tasks[task], task.result()) for task in done]
            rec = await record(state, batch_id, finished, incarnation)
            _account(state, batch_id, topic, finished, rec, tally)
            state.running.difference_update(f"{batch_id}/{station_id}" for station_id, _ in finished)
            state.done += len(finished)
    finally:
        for task in pending:
            task.cancel()
        state.running.difference_update(f"{batch_id}/{station_id}" for station_id in stations)
    return tally


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
