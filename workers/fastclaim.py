"""arq's Worker, serving every shard's queue and claiming jobs (groups of stations) several at a time.

Two changes to arq 0.28's Worker, nothing else (running, retries, timeouts, shutdown are arq's):

- **Shards.** Each shard of the keyspace has its own queue (``{TAG}:queue``).  A StationWorker
  serves a list of shards: every poll reads each queue (one pipelined round trip), claims from each,
  and finishes a job against the queue its job id names.  arq's ``arq:abort`` set is never touched
  (station jobs are not abortable): arq writes it in the same MULTI as the job's own keys, which is
  cross-slot on a Redis Cluster.
- **Batched claims.** arq claims each job it starts with four round trips (WATCH the in-progress
  key, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC).  ``claim_jobs.lua`` makes the same claim for up to
  CLAIM_CHUNK free job slots at once, with the same keys and TTLs, so batchfleet workers and a plain
  arq worker (``arq batchfleet.workers.WorkerSettings``, one shard only) can share a queue.

- **Finishes in flight.**  arq writes a job's end (``finish_job``, ``finish_failed_job``) under
  ``asyncio.shield``, so cancelling a job at shutdown leaves its finish running as a task of its own.
  A StationWorker keeps those tasks in ``finishing``; ``settle_finishes`` waits for them (at most
  ``finish_wait_s``, then cancels them) before the worker process closes the arq client.  Closing it
  under a running finish made that finish reconnect and leave a connection open after the close.

- **Claim what can start.**  With ``BATCHFLEET_WORKER_CONCURRENCY`` set, a poll claims only as many
  jobs as the process has room for (``workers/slots.py``: free slots, less the calls waiting for one
  and the jobs claimed but not started), so a burst spreads over idle workers instead of queueing
  inside one.  Between polls the worker rests ``poll_delay`` but wakes as soon as a slot frees.

The overrides use arq 0.28's worker state (``job_counter``, ``sem``, ``tasks``), hence the pin in
pyproject.toml; tests/integration/test_worker_jobs.py runs it beside a plain arq worker on one queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.utils import to_ms
from arq.worker import Worker

from batchfleet.keys import Keys
from batchfleet.workers.slots import Slots
from batchfleet.workers.station import WorkerContext

__all__ = ["CLAIM_CHUNK", "StationWorker"]

# Jobs claimed per script call.  Claiming a whole poll at once starts every job in the same event-loop
# step, and a long step delays the record of the station that completes a batch.  Measured on 2 cores
# when a job was one station (2 workers, 100-station batches at ~250 stations/s; end-to-end throughput
# / raw arq at full load): chunk 1: completion -> upload p99 10 ms, 0.90x;  3: 15-16 ms, 1.2-1.4x;
# 10: 22-37 ms, 1.45x.  A job is now a group of up to STATIONS_PER_JOB stations, so 3 is a ceiling.
CLAIM_CHUNK = 3
CLAIM_WINDOW = 4  # candidates passed per claim call, per job wanted (other workers' running jobs lead the queue)
FINISH_WAIT_S = 5.0  # a job's finish still running at close is cancelled after this (a round trip, bounded by the socket timeout)


class StationWorker(Worker):
    """An arq Worker over the queues of ``shards`` (its ``queue_name`` is the first one's, where arq
    keeps its health-check key)."""

    def __init__(self, *, keys: Keys, shards: Sequence[int], carried: Callable[[], int] = lambda: 0, **kwargs: Any) -> None:
        super().__init__(queue_name=keys.queue(shards[0]), **kwargs)
        self.keys = keys
        # jobs of this process still running on an arq worker that Redis ended (workers/main.py): they
        # hold slots of max_jobs until they end
        self.carried = carried
        self.served = list(shards)
        self._until_empty = False
        self.finishing: set[asyncio.Task[Any]] = set()
        self.finish_wait_s = FINISH_WAIT_S
        self.rest_s, self.poll_delay_s = self.poll_delay_s, 0  # arq's poll() does not sleep: _rest does

    async def main(self) -> None:
        if not self.burst:
            await super().main()
            return
        # burst: arq's loop ends once its one queue is empty; ours once every served queue is
        self.burst, self._until_empty = False, True
        with contextlib.suppress(_QueuesEmpty):
            await super().main()
        await asyncio.gather(*self.tasks.values())

    def _slots(self) -> Slots | None:
        state = cast(WorkerContext, self.ctx).get("batchfleet")
        return state.slots if state is not None else None

    def _room(self) -> int:
        """Jobs this worker may claim now: free job slots (less the jobs of a retired arq worker of this
        process still running), and room for processor calls to start."""
        slots = self._slots()
        return min(self.max_jobs - self.job_counter - self.carried(), slots.room() if slots is not None else 0)

    async def _rest(self, began: float) -> None:
        """Wait out the poll delay (counted from ``began``); with a concurrency limit, wake early when
        a slot frees."""
        slots = self._slots()
        left = self.rest_s - (time.monotonic() - began)
        if slots is None or not slots.size:
            await asyncio.sleep(max(left, 0))
            return
        if left > 0 and not slots.changed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slots.changed.wait(), left)

    async def _poll_iteration(self) -> None:
        began = time.monotonic()
        slots = self._slots()
        if slots is not None:
            slots.changed.clear()  # what changes from here on wakes _rest
        await self._poll_once()
        await self._rest(began)

    async def _poll_once(self) -> None:
        if self.allow_pick_jobs and self._room() > 0:
            now_ms = int(time.time() * 1000)
            async with self.pool.pipeline(transaction=False) as pipe:
                for shard in self.served:
                    pipe.zrangebyscore(self.keys.queue(shard), "-inf", now_ms, start=0, num=self.queue_read_limit)
                queued = await pipe.execute()
            for shard, job_ids in zip(self.served, queued, strict=True):
                if job_ids and self._room() > 0:
                    await self._claim(shard, [j.decode() for j in job_ids])
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # errors in run_job propagate, as in arq
        await self.heart_beat()
        if self._until_empty and not self.tasks and not await self._queued():
            raise _QueuesEmpty

    async def _queued(self) -> int:
        async with self.pool.pipeline(transaction=False) as pipe:
            for shard in self.served:
                pipe.zcard(self.keys.queue(shard))
            return sum(int(n) for n in await pipe.execute())

    async def _claim(self, shard: int, job_ids: list[str]) -> None:
        state = cast(WorkerContext, self.ctx).get("batchfleet")
        if state is None:  # not started up (cannot happen after on_startup)
            return
        in_progress_ms = int(self.in_progress_timeout_s * 1000)
        # this worker's own running jobs are still queued (they leave the queue when they finish)
        candidates = [job_id for job_id in job_ids if job_id not in self.tasks]
        while candidates and self._room() > 0:
            want = min(self._room(), CLAIM_CHUNK)
            window = candidates[: want * CLAIM_WINDOW]
            claimed = await state.store.claim_jobs(
                shard, window, now_ms=int(time.time() * 1000), in_progress_ms=in_progress_ms, want=want
            )
            for job_id, score in claimed:
                await self.sem.acquire()  # never waits: the free slots were counted above
                self.job_counter += 1
                state.slots.expect(job_id)
                task = asyncio.create_task(self.run_job(job_id, score))
                task.add_done_callback(lambda _, j=job_id: self._job_done(j))  # type: ignore[misc]
                self.tasks[job_id] = task
            if len(claimed) < want:  # the rest of the window is running elsewhere (or not due)
                candidates = candidates[len(window) :]
            else:
                candidates = candidates[candidates.index(claimed[-1][0]) + 1 :]

    def _job_done(self, job_id: str) -> None:
        self._release_sem_dec_counter_on_complete()
        slots = self._slots()
        if slots is not None:
            slots.arrived(job_id)

    def _queue_of(self, job_id: str) -> str:
        return self.keys.queue(self.keys.shard_of_job(job_id))

    async def finish_job(self, *args: Any, **kwargs: Any) -> None:
        self._track_finish()
        await self._finish_job(*args, **kwargs)

    async def finish_failed_job(self, *args: Any, **kwargs: Any) -> None:
        self._track_finish()
        await self._finish_failed_job(*args, **kwargs)

    def _track_finish(self) -> None:
        """Remember the task running a finish (arq runs it under ``asyncio.shield``: a task of its own)."""
        task = asyncio.current_task()
        if task is not None and task not in self.finishing:
            self.finishing.add(task)
            task.add_done_callback(self.finishing.discard)

    async def settle_finishes(self) -> None:
        """Wait for the finishes still running (a job cancelled at shutdown leaves its finish running),
        at most ``finish_wait_s``; cancel the ones left and wait for them to end."""
        pending = {t for t in self.finishing if t is not asyncio.current_task()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.finish_wait_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's finish, against the job's own shard queue and without ``arq:abort``: every key is in
        the job's slot."""
        async with self.pool.pipeline(transaction=True) as tr:
            delete = [] if keep_in_progress is not None else [in_progress_key_prefix + job_id]
            if keep_in_progress is not None:
                tr.pexpire(in_progress_key_prefix + job_id, to_ms(keep_in_progress))
            if finish:
                if result_data:
                    tr.set(result_key_prefix + job_id, result_data, px=to_ms(None if keep_result_forever else result_timeout_s))
                delete += [retry_key_prefix + job_id, job_key_prefix + job_id]
                tr.zrem(self._queue_of(job_id), job_id)
            elif incr_score:
                tr.zincrby(self._queue_of(job_id), incr_score, job_id)
            if delete:
                tr.delete(*delete)
            await tr.execute()

    async def _finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        async with self.pool.pipeline(transaction=True) as tr:
            tr.delete(retry_key_prefix + job_id, in_progress_key_prefix + job_id, job_key_prefix + job_id)
            tr.zrem(self._queue_of(job_id), job_id)
            if result_data is not None and (self.keep_result_forever or self.keep_result_s > 0):
                tr.set(result_key_prefix + job_id, result_data, px=to_ms(0 if self.keep_result_forever else self.keep_result_s))
            await tr.execute()


class _QueuesEmpty(Exception):
    """Ends the poll loop of a burst worker once every served queue is empty."""
