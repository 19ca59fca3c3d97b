"""Start and stop fleet processes: the one helper the tests, the demo, the benchmark and the chaos run share.

A role runs as ``python -m batchfleet ROLE`` with its settings as ``BATCHFLEET_*`` variables
(:func:`role_env`), its output appended to a log file, in a session of its own (so a Ctrl-C on the
terminal reaches the tool that started it, which then stops its processes in order), and is
stopped by its PID only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path

from batchfleet.settings import Settings
from batchfleet_dev import REPO, SCRIPTS

__all__ = ["RoleProcess", "role_env", "stop_all", "until_while_alive"]


def role_env(settings: Settings | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without its ``BATCHFLEET_*`` variables, plus the settings and ``extra``.

    The checkout and ``scripts/`` go first on ``PYTHONPATH``, so a child can import test and tool
    processors (``tests.integration.processors``, ``batchfleet_dev.bench``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFLEET_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(SCRIPTS), env.get("PYTHONPATH", "")) if p)
    if settings is not None:
        env |= settings.as_env()
    return env | dict(extra or {})


class RoleProcess:
    """One process we started (by default ``python -m batchfleet ROLE``).

    ``prefix`` goes before the command, e.g. ``["ip", "netns", "exec", NS]`` to run it inside a
    network namespace (batchfleet_dev.hosts); the prefix must exec the command, so the PID stays it."""

    def __init__(
        self, role: str, env: Mapping[str, str], log_path: Path, args: list[str] | None = None, *, prefix: Sequence[str] = ()
    ) -> None:
        self.role = role
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [*prefix, *(args or [sys.executable, "-m", "batchfleet", role])],
                env=dict(env),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def note(self, text: str) -> None:
        """Append a marked line to the process's log (what a tool did to it, and when)."""
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')}: {text}\n".encode())

    def wait(self, timeout_s: float) -> int:
        """Wait for the exit; SIGKILL after ``timeout_s``."""
        try:
            return self.popen.wait(max(timeout_s, 0.01))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def stop(self, timeout_s: float = 20) -> int:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout_s``."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def stop_all(procs: Iterable[RoleProcess], timeout_s: float = 20) -> None:
    """SIGTERM every process at once, then wait for all within one shared deadline; SIGKILL the rest."""
    procs = list(procs)
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.wait(deadline - time.monotonic())


async def until_while_alive(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, procs: Iterable[RoleProcess], every_s: float = 0.1
) -> None:
    """Poll ``check`` until it holds; fail at once with its log tail when one of ``procs`` has exited,
    and with ``what`` after ``timeout_s``."""
    procs = list(procs)
    deadline = time.monotonic() + timeout_s
    while not await check():
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.role} exited with {p.returncode}:\n{p.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s}s")
        await asyncio.sleep(every_s)
