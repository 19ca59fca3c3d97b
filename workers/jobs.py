"""The arq job functions: ``run_group`` (several stations of one batch) and ``run_station`` (one).

A group job ``{TAG}:BATCH#N`` carries its stations' records, their time budget and the batch deadline
(Redis time), so it runs without reading Redis first; its stations run concurrently (workers/group.py)
and are recorded as they finish.  The batch state is read first only when the batch may already be
finalized: its deadline has passed by the worker's estimate of Redis time, or a station of it came
back late to this worker.  ``record_outcome.lua`` decides either way; the read only saves running
stations whose outcome could no longer be uploaded.

A group job that runs a second time (arq's ``job_try`` > 1) was started before by a worker that died
or was stopped mid-group.  It does not run its stations again: it queues a one-station job for each
station that has no outcome yet (``split_group.lua``), so every station is re-run on its own and a
station that keeps killing workers is given up on alone (``MAX_ATTEMPTS``), as one-station jobs always
were.  One-station jobs are also what dispatchers queue while a worker of an earlier release (which
knows no groups) is alive, and what such releases queued; their arguments are ``[records, budget_ms,
deadline_ms]``.  A split job carries the attempts its station lost in arq's own ``"t"`` field, so arq
starts it at the next attempt, on this release's workers and on earlier ones alike.
"""

from __future__ import annotations

import logging
from typing import Any

from batchfleet import metrics
from batchfleet.keys import Keys, topic_of_batch
from batchfleet.models import Outcome
from batchfleet.store import station_job
from batchfleet.workers.group import run_stations
from batchfleet.workers.station import MAX_ATTEMPTS, WorkerContext, WorkerState, patiently, record

__all__ = ["run_group", "run_station"]

log = logging.getLogger(__name__)
_SPLIT_JOB_EXTRA_MS = 60_000  # a split station job not started by the batch deadline + this is dropped by arq


def _budget_s(state: WorkerState, budget_ms: int | None) -> float:
    return state.settings.station_timeout_s or (budget_ms / 1000 if budget_ms else 5.0)


async def _finalized(state: WorkerState, batch_id: str, deadline_ms: int | None, stations: int) -> bool:
    """True when the batch is known to be finalized (or gone): its stations are skipped, not run."""
    if not state.maybe_finalized(batch_id, deadline_ms):
        return False
    got = await state.store.batch_state(batch_id)
    if got == "open":
        return False
    topic = topic_of_batch(batch_id)
    if got is not None:
        state.saw_finalized(batch_id)
        metrics.STATIONS_SKIPPED.labels(topic).inc(stations)
    log.info(
        "batch %s: %d station(s) skipped, batch %s",
        batch_id,
        stations,
        f"already {got}" if got else "no longer exists",
        extra={"batch_id": batch_id, "topic": topic},
    )
    return True


async def run_group(ctx: WorkerContext, stations: dict[str, list[dict[str, Any]]], budget_ms: int, deadline_ms: int) -> str:
    """arq job: a group of stations of one batch, named by the job id ``{TAG}:BATCH#N``."""
    state = ctx["batchfleet"]
    batch_id, incarnation = Keys.parse_group_job(ctx["job_id"])
    if await _finalized(state, batch_id, deadline_ms, len(stations)):
        return "skipped"
    job_try = int(ctx.get("job_try") or 1)
    if job_try > 1:
        return await _split(state, ctx, (batch_id, incarnation), stations, budget_ms, deadline_ms, tried=job_try - 1)
    state.slots.arrived(ctx["job_id"])  # its calls are reserved in run_stations, in this same step
    budget_s = _budget_s(state, budget_ms)
    tally = await run_stations(
        state, batch_id, topic_of_batch(batch_id), stations, budget_s=budget_s, attempt=1, incarnation=incarnation
    )
    return ", ".join(f"{n} {status}" for status, n in sorted(tally.items()))


async def _split(
    state: WorkerState,
    ctx: WorkerContext,
    batch: tuple[str, str],
    stations: dict[str, list[dict[str, Any]]],
    budget_ms: int,
    deadline_ms: int,
    *,
    tried: int,
) -> str:
    """The group ran before and its worker died: one job per station without an outcome (``batch``: the
    batch id and the group's incarnation)."""
    batch_id, incarnation = batch
    now_ms = int(state.redis_now_ms())
    jobs = {sid: station_job(records, budget_ms, deadline_ms, tried, now_ms) for sid, records in stations.items()}
    expire_ms = max(deadline_ms - now_ms, 0) + _SPLIT_JOB_EXTRA_MS
    score = int(ctx.get("score") or now_ms)
    kind, created, recorded = await patiently(
        lambda: state.store.split_group(batch_id, jobs, score=score, job_expire_ms=expire_ms, incarnation=incarnation),
        f"splitting a group of {batch_id}",
    )
    extra = {"batch_id": batch_id, "topic": topic_of_batch(batch_id)}
    if kind != "split":
        why = "the batch is no longer open" if kind == "closed" else "the batch was created again (Redis lost it)"
        log.info("batch %s: a group's re-run is not needed, %s", batch_id, why, extra=extra)
        return kind
    log.warning(
        "batch %s: a group of %d station(s) is running again (its worker died after %d attempt(s)): %d re-queued"
        " one by one, %d already recorded",
        batch_id,
        len(stations),
        tried,
        created,
        recorded,
        extra=extra,
    )
    return f"split: {created} re-queued, {recorded} recorded"


async def run_station(ctx: WorkerContext, records: list[dict[str, Any]], budget_ms: int, deadline_ms: int) -> str:
    """arq job: one station of one batch, named by the job id ``{TAG}:BATCH:STATION``.  A job split off a
    group starts at the attempt after its group's lost ones (arq's ``job_try``, set from the job)."""
    state = ctx["batchfleet"]
    batch_id, station_id, incarnation = state.store.keys.parse_job_id(ctx["job_id"])
    topic = topic_of_batch(batch_id)
    if await _finalized(state, batch_id, deadline_ms, 1):
        return "skipped"
    attempt = int(ctx.get("job_try") or 1)
    if attempt > MAX_ATTEMPTS:
        return await _give_up(state, (batch_id, incarnation), station_id, attempt, topic)
    state.slots.arrived(ctx["job_id"])
    budget_s = _budget_s(state, budget_ms)
    tally = await run_stations(
        state, batch_id, topic, {station_id: records}, budget_s=budget_s, attempt=attempt, incarnation=incarnation
    )
    return ", ".join(tally)


async def _give_up(state: WorkerState, batch: tuple[str, str], station_id: str, attempt: int, topic: str) -> str:
    """The station's earlier attempts never finished (the worker running them died): stop trying."""
    batch_id, incarnation = batch
    error = f"gave up: {attempt - 1} earlier attempt(s) never finished (the worker running them died)"
    outcome = Outcome(status="failed", error=error, worker=state.name, attempt=attempt)
    rec = await record(state, batch_id, [(station_id, outcome)], incarnation)
    if rec.codes == "r":
        metrics.STATIONS.labels(topic, "failed").inc()
    log.error("batch %s: station %s %s", batch_id, station_id, error, extra={"batch_id": batch_id, "topic": topic})
    return rec.status(0)
