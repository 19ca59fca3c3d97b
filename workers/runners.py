"""Threads that run sync processor calls back to back, under ``BATCHFLEET_WORKER_CONCURRENCY``.

Without a concurrency limit every sync call gets a thread of its own (workers/processor.py).  With a
limit of C, C long-lived runner threads take calls from one FIFO queue: a job's calls are queued at
once, and a runner starts the next as soon as the last returns, without waiting for the event loop.
(Measured on the 2-core machine: a thread per 3 ms call cost 1.1 ms more CPU and 3.4 ms more wall time
a call than a runner, the wake-ups of a loaded machine included.)

A call's budget and duration count from when a runner starts it (the runner notes the time).  A call
still running at its budget is abandoned: its station fails with a timeout, a fresh runner takes its
place, and the abandoned thread ends when the call returns (counted by ``abandoned_threads``).  A call
cancelled before a runner took it never runs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Call", "Runners"]


class Call:
    """One sync call, queued for a runner; ``started`` and ``result`` settle on the event loop."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.args, self.loop = fn, args, loop
        self.started: asyncio.Future[float] = loop.create_future()  # perf_counter when a runner took it
        self.result: asyncio.Future[tuple[bool, Any, float]] = loop.create_future()  # (ok, value or error, ended)
        self.abandoned = False
        self._state = "queued"  # queued -> running -> done, or queued -> cancelled
        self._lock = threading.Lock()

    def take(self) -> bool:
        """A runner takes the call (False: it was cancelled while queued)."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "running"
        self._post(self.started, time.perf_counter())
        return True

    def run(self) -> bool:
        """Run the call and post its result; True when it was abandoned meanwhile."""
        try:
            outcome: tuple[bool, Any] = (True, self.fn(*self.args))
        except BaseException as exc:
            outcome = (False, exc)
        ended = time.perf_counter()
        with self._lock:
            self._state = "done"
            abandoned = self.abandoned
        self._post(self.result, (*outcome, ended))
        return abandoned

    def abandon(self) -> bool:
        """Mark a running call abandoned; False when it is not running (done, or never started)."""
        with self._lock:
            if self._state != "running":
                return False
            self.abandoned = True
            return True

    def cancel(self) -> bool:
        """True when the call had not started (it never will)."""
        with self._lock:
            if self._state == "queued":
                self._state = "cancelled"
                return True
            return False

    def _post(self, future: asyncio.Future[Any], value: Any) -> None:
        def settle() -> None:
            if not future.done():
                future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed
            pass


class Runners:
    """``size`` runner threads over one FIFO queue of calls."""

    def __init__(self, size: int, on_abandoned_end: Callable[[], None] = lambda: None) -> None:
        self.size = size
        self._queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._on_abandoned_end = on_abandoned_end
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._serve, name="station-runner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            if not call.take():
                continue
            if call.run():  # abandoned: its replacement runs already
                self._on_abandoned_end()
                return

    def submit(self, fn: Callable[..., Any], *args: Any) -> Call:
        call = Call(fn, args, asyncio.get_running_loop())
        self._queue.put(call)
        return call

    def abandon(self, call: Call) -> bool:
        """The call overran (or its job was cancelled) while running: a fresh runner takes its place.
        False when the call is not running any more (nothing to abandon)."""
        if not call.abandon():
            return False
        self._spawn()
        return True

    def close(self) -> None:
        """Each runner ends after the calls queued before this (abandoned ones when their call returns)."""
        for _ in range(self.size):
            self._queue.put(None)
