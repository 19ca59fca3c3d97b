"""``batchfleet worker --processes N``: one supervisor, N worker processes (every core of a host).

Each child is a whole worker process (``workers/main.py``'s ``serve``: its own processor set-up, event
loop, Redis clients, heartbeat ``worker:HOST:PID`` and metrics port ``BATCHFLEET_METRICS_PORT + i``).
Children are fresh interpreters (``python -c``, settings passed on stdin), not forks: a model's
``setup`` runs in each child, after which nothing is shared but the page cache (weights read with
``mmap``, e.g. ``numpy.load(mmap_mode="r")``, are shared by all children).  Forking a preloaded parent
would share the weights copy-on-write too (``scripts/bench --models`` measures both), but forking after
a model library started its thread pools (onnxruntime, OpenMP, torch) or a parent's event loop is not
safe, so batchfleet does not.

- A child that dies is restarted, after a backoff that grows while it keeps dying soon after starting;
  each restart is logged.  A child whose set-up fails (exit 2) stops the whole worker: its one-line
  error is the supervisor's, exit code 2.
- SIGTERM/SIGINT: every child is told to drain (SIGTERM) and gets ``BATCHFLEET_WORKER_GRACE_S`` (plus
  the margins of its own watchdog); one still running then is killed.  A second signal is passed on,
  so every child exits at once.  Children run in their own process group, so a Ctrl-C in a terminal
  reaches them once, through the supervisor; a child whose supervisor is gone stops by itself.
- ``--burst``: each child exits once the queues are empty; the supervisor once every child has.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from batchfleet.errors import BatchfleetError, ConfigError
from batchfleet.retry import Backoff
from batchfleet.runtime import GRACE_MARGIN_S
from batchfleet.settings import Settings, load_settings

__all__ = ["child_main", "supervise"]

log = logging.getLogger(__name__)
RESTART_BACKOFF = Backoff(1.0, 30.0)
_HEALTHY_RUN_S = 60.0  # a child that ran this long before dying is restarted without the earlier backoff
_LOOK_S = 0.2  # how often the supervisor looks at its children
_PARENT_LOOK_S = 1.0  # how often a child checks that its supervisor is alive
_CHILD = "from batchfleet.workers.supervisor import child_main; child_main()"


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes] | None = None
    error_fd: int = -1  # read end of the pipe the child writes its configuration error to
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    done: bool = False
    error: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(self, settings: Settings, processes: int, *, burst: bool) -> None:
        self.settings = settings
        self.burst = burst
        self.children = [_Child(i) for i in range(processes)]
        self.signals: list[int] = []
        self.drain_until: float | None = None

    def _start(self, child: _Child) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        settings = self.settings.model_copy(update={"worker_processes": 1})
        if settings.metrics_port:
            settings = settings.model_copy(update={"metrics_port": settings.metrics_port + child.index})
        args = [sys.executable, "-c", _CHILD, str(child.index), str(write_fd), str(os.getpid()), "1" if self.burst else "0"]
        process = subprocess.Popen(args, stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env, process_group=0)
        os.close(write_fd)
        if process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.write(json.dumps(settings.as_env()).encode())
                process.stdin.close()
        child.process, child.error_fd, child.started, child.restart_at = process, read_fd, time.monotonic(), None
        log.info("worker process %d started (pid %d)", child.index, process.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for child in self.children:
                self._start(child)
            while not all(c.done for c in self.children):
                self._handle_signals()
                for child in self.children:
                    self._look_at(child)
                self._kill_after_grace()
                self._wait()
        finally:
            for child in self.children:
                self._kill(child)
        log.info("every worker process has stopped")

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if self.drain_until is None:
                grace = self.settings.worker_grace_s
                log.info(
                    "%s received: draining %d worker process(es) for up to %gs",
                    signal.Signals(signum).name,
                    len(self.children),
                    grace,
                )
                self.drain_until = time.monotonic() + grace + 3 * GRACE_MARGIN_S
            else:
                log.warning("second %s: every worker process exits now", signal.Signals(signum).name)
            for child in self.children:
                self._send(child, signal.SIGTERM)
                if child.process is None:
                    child.done = True

    def _send(self, child: _Child, sig: int) -> None:
        if child.process is not None and child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(sig)

    def _look_at(self, child: _Child) -> None:
        if child.done:
            return
        if child.process is None:
            if child.restart_at is not None and time.monotonic() >= child.restart_at and self.drain_until is None:
                self._start(child)
            return
        code = child.process.poll()
        if code is None:
            return
        error = self._read_error(child)
        child.process = None
        if self.drain_until is not None or (self.burst and code == 0):
            child.done = True
            return
        if code == 2 and error:
            self._stop_all()
            raise ConfigError(error)
        ran_s = time.monotonic() - child.started
        child.failures = 1 if ran_s > _HEALTHY_RUN_S else child.failures + 1
        delay_s = RESTART_BACKOFF.delay_s(child.failures)
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        log.warning("worker process %d died (%s) after %.1fs; restarting it in %.1fs", child.index, how, ran_s, delay_s)
        child.restart_at = time.monotonic() + delay_s

    def _read_error(self, child: _Child) -> str:
        text = b""
        with contextlib.suppress(OSError):
            while select.select([child.error_fd], [], [], 0)[0]:
                chunk = os.read(child.error_fd, 4096)
                if not chunk:
                    break
                text += chunk
        with contextlib.suppress(OSError):
            os.close(child.error_fd)
        child.error_fd = -1
        return text.decode(errors="replace").strip()

    def _stop_all(self) -> None:
        """Another child's set-up failed: the others are stopped (killed after their grace)."""
        for child in self.children:
            self._send(child, signal.SIGTERM)
        until = time.monotonic() + self.settings.worker_grace_s + 3 * GRACE_MARGIN_S
        for child in self.children:
            if child.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(max(until - time.monotonic(), 0))
            self._kill(child)

    def _kill_after_grace(self) -> None:
        if self.drain_until is None or time.monotonic() < self.drain_until:
            return
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                log.error("worker process %d (pid %d) did not stop within its grace: killed", child.index, child.process.pid)
                self._kill(child)
            child.done = True

    def _kill(self, child: _Child) -> None:
        if child.process is not None and child.process.poll() is None:
            child.process.kill()
            child.process.wait()
        if child.error_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(child.error_fd)
            child.error_fd = -1

    def _wait(self) -> None:
        fds = [c.error_fd for c in self.children if c.process is not None and c.error_fd >= 0]
        with contextlib.suppress(InterruptedError, OSError, ValueError):
            select.select(fds, [], [], _LOOK_S)  # a child's exit closes its pipe: wakes at once


def supervise(settings: Settings, processes: int, *, burst: bool = False) -> None:
    """Run ``processes`` worker processes until SIGTERM/SIGINT (or, with ``burst``, until every one has
    found the queues empty)."""
    from batchfleet.workers.processor import load_processor

    load_processor(settings.processor)  # a bad BATCHFLEET_PROCESSOR fails before any child starts
    log.info("starting %d worker processes", processes)
    Supervisor(settings, processes, burst=burst).run()


def _watch_parent(parent: int) -> None:
    """Drain (SIGTERM to ourselves) once the supervisor is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_LOOK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def child_main() -> None:
    """A worker process of the supervisor: ``python -c ... INDEX ERROR_FD PARENT_PID BURST``, settings
    as ``BATCHFLEET_*`` variables in JSON on stdin (never logged: they hold the secrets).  A configuration error (a failed set-up)
    goes to the supervisor's pipe as one line, exit code 2."""
    from batchfleet.logs import configure_logging
    from batchfleet.workers.main import serve

    _, _index, error_fd, parent, burst = sys.argv
    os.environ.update(json.loads(sys.stdin.buffer.read()))  # the supervisor's settings, CLI flags included
    try:
        settings = load_settings()
    except ConfigError as exc:  # e.g. the BATCHFLEET_CONFIG file went away since the supervisor read it
        os.write(int(error_fd), str(exc).encode())
        sys.exit(2)
    configure_logging(settings.log_format, settings.log_level, "worker")
    _watch_parent(int(parent))
    code = 0
    try:
        serve(settings, burst=burst == "1")
    except ConfigError as exc:
        os.write(int(error_fd), str(exc).encode())
        code = 2
    except BatchfleetError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)
