"""How many processor calls one worker process runs at once (``BATCHFLEET_WORKER_CONCURRENCY``).

A call is one station (``process``) or one group (``process_group``).  A call holds a slot while it
runs; its budget and recorded duration start when it gets one.  The worker claims jobs only while it
has room: slots not wanted by calls already waiting nor promised to jobs claimed but not started yet
-- so it takes only what it can start now (or the moment its running call returns), and a burst
spreads over idle workers.
``size`` 0 means no limit: every claimed station starts at once (sync ones on threads of their own).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["Slots", "Ticket"]

_NO_LIMIT = 1 << 30


class Slots:
    def __init__(self, size: int = 0) -> None:
        self.size = size
        self.running = 0
        self.queued = 0  # calls reserved (or waiting) for a slot, not running yet
        self.expected: set[str] = set()  # job ids claimed whose calls are not reserved yet
        self.changed = asyncio.Event()  # set when room may have grown
        self._sem = asyncio.Semaphore(size) if size else None

    def room(self) -> int:
        """Jobs to claim now (a large number without a limit): one per slot that no queued call and no
        claimed job is waiting for.  A running call does not count, so a slot's next job is claimed
        while its last call runs and starts the moment that call returns: at most one job per slot
        waits behind a running call, and the runners never idle between jobs."""
        if not self.size:
            return _NO_LIMIT
        return max(0, self.size - self.queued - len(self.expected))

    def expect(self, job_id: str) -> None:
        self.expected.add(job_id)

    def arrived(self, job_id: str) -> None:
        """The job reserved its calls, or ended without any."""
        if job_id in self.expected:
            self.expected.discard(job_id)
            self.changed.set()

    def reserve(self, calls: int) -> Ticket:
        """Count ``calls`` calls as waiting for a slot (before their tasks first run); ``done`` with the
        ticket gives back what was not used (calls cancelled before they started)."""
        self.queued += calls
        return Ticket(calls)

    def done(self, ticket: Ticket) -> None:
        if ticket.left:
            self.queued -= ticket.left
            ticket.left = 0
            self.changed.set()

    @asynccontextmanager
    async def hold(self, ticket: Ticket) -> AsyncIterator[None]:
        """Hold a slot for one call of ``ticket`` (waiting for one when all are taken)."""
        try:
            if self._sem is not None:
                await self._sem.acquire()
        except BaseException:
            ticket.left -= 1
            self.queued -= 1
            raise
        self.begin(ticket)
        try:
            yield
        finally:
            self.end()
            if self._sem is not None:
                self._sem.release()

    def begin(self, ticket: Ticket) -> None:
        """A call of ``ticket`` started (on a runner thread, which is its slot; or holding the semaphore)."""
        ticket.left -= 1
        self.queued -= 1
        self.running += 1
        self.changed.set()

    def end(self) -> None:
        self.running -= 1
        self.changed.set()


class Ticket:
    """Calls reserved by one job, not started yet."""

    def __init__(self, left: int) -> None:
        self.left = left
