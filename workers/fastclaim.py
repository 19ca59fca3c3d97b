"""arq's Worker with one change: jobs are claimed several at a time, with one script call.

arq claims each job it starts with four round trips (WATCH the in-progress key, EXISTS, ZSCORE, then
MULTI/PSETEX/EXEC); at a few hundred no-op jobs per second that is most of a worker's CPU.
``claim_jobs.lua`` makes the same claim for up to CLAIM_CHUNK free job slots at once, with the same
keys and TTLs, so batchfleet workers and plain arq workers (``arq batchfleet.workers.WorkerSettings``) can
share a queue.
Everything else — running, retries, timeouts, finishing, shutdown — is arq's own.  The override
uses arq 0.28's worker state (``job_counter``, ``sem``, ``tasks``), hence the pin in pyproject.toml;
tests/integration/test_worker_jobs.py runs it beside a plain arq worker on one queue.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from arq.worker import Worker

from batchfleet.workers.station import WorkerContext

__all__ = ["CLAIM_CHUNK", "StationWorker"]

# Jobs claimed per script call.  Claiming a whole poll at once starts every job in the same event-loop
# step, and a long step delays the record of the station that completes a batch.  Measured on 2 cores
# (2 workers, 100-station batches at ~250 stations/s; end-to-end throughput / raw arq at full load):
# chunk 1: completion -> upload p99 10 ms, 0.90x;  3: 15-16 ms, 1.2-1.4x;  10: 22-37 ms, 1.45x.
CLAIM_CHUNK = 3
CLAIM_WINDOW = 4  # candidates passed per claim call, per job wanted (other workers' running jobs lead the queue)


class StationWorker(Worker):
    async def start_jobs(self, job_ids: list[bytes]) -> None:
        ctx = cast(WorkerContext, self.ctx)
        state = ctx.get("batchfleet")
        if state is None:  # not started up (cannot happen after on_startup): arq's own claim
            await super().start_jobs(job_ids)
            return
        in_progress_ms = int(self.in_progress_timeout_s * 1000)
        # this worker's own running jobs are still queued (arq removes a job when it finishes)
        candidates = [job_id for job_id in map(bytes.decode, job_ids) if job_id not in self.tasks]
        while candidates and self.job_counter < self.max_jobs:
            want = min(self.max_jobs - self.job_counter, CLAIM_CHUNK)
            window = candidates[: want * CLAIM_WINDOW]
            claimed = await state.store.claim_jobs(window, now_ms=int(time.time() * 1000), in_progress_ms=in_progress_ms, want=want)
            for job_id, score in claimed:
                await self.sem.acquire()  # never waits: the free slots were counted above
                self.job_counter += 1
                task = asyncio.create_task(self.run_job(job_id, score))
                task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = task
            if len(claimed) < want:  # the rest of the window is running elsewhere (or not due)
                candidates = candidates[len(window) :]
            else:
                candidates = candidates[candidates.index(claimed[-1][0]) + 1 :]
