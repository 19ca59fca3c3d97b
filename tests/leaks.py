"""What a test run must not leave behind: processes it started, and files in the temporary directory.

The run gets a temporary directory of its own (``TMPDIR`` and ``tempfile.tempdir``, inherited by
every child process) and a marker in its environment, so the checks see only this run's leftovers,
even while other test runs share the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MARK = "PYTEST_BATCHFLEET_RUN"  # not BATCHFLEET_*: role_env() drops those from a child's environment
PYTEST_TEMP = "pytest-of-"  # pytest's own tmp_path root, removed with the directory after a clean run


@dataclass
class RunGuard:
    tempdir: Path
    mark: str
    pid: int
    previous_tempdir: str | None
    keep: bool = False

    @classmethod
    def start(cls) -> RunGuard:
        previous = os.environ.get("TMPDIR")
        tempdir = Path(tempfile.mkdtemp(prefix="pytest-batchfleet-"))
        mark = uuid.uuid4().hex
        os.environ["TMPDIR"] = str(tempdir)
        os.environ[MARK] = mark
        tempfile.tempdir = str(tempdir)
        return cls(tempdir, mark, os.getpid(), previous)

    def leftovers(self, grace_s: float = 3.0) -> list[str]:
        """Processes still alive (after ``grace_s`` for ones just told to stop) and files left."""
        deadline = time.monotonic() + grace_s
        processes = self.leftover_processes()
        while processes and time.monotonic() < deadline:
            time.sleep(0.1)
            processes = self.leftover_processes()
        found = [f"process still running: {p}" for p in processes.values()]
        return found + [f"file in the temporary directory {self.tempdir}: {name}" for name in self.leftover_files()]

    def stop_leftover_processes(self) -> None:
        """SIGKILL what the run left running (each by its PID; every one was started by this run)."""
        for pid in self.leftover_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftover_files(self) -> list[str]:
        if not self.tempdir.exists():
            return []
        return sorted(p.name for p in self.tempdir.iterdir() if not p.name.startswith(PYTEST_TEMP))

    def leftover_processes(self) -> dict[int, str]:
        """PID -> description of each live process (not a zombie) that is a child of this run or
        carries its marker."""
        proc = Path("/proc")
        if not proc.is_dir():  # pragma: no cover - Linux only; elsewhere only the temp check runs
            return {}
        found = {}
        needle = f"{MARK}={self.mark}".encode()
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            described = _describe(entry, self.pid, needle)
            if described:
                found[int(entry.name)] = described
        return found

    def finish(self, keep: bool) -> bool:
        """Restore the environment; remove the run's temporary directory unless ``keep`` and it
        holds something (a failed test's tmp_path, a leftover).  True when it was kept."""
        os.environ.pop(MARK, None)
        if self.previous_tempdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = self.previous_tempdir
        tempfile.tempdir = None
        return self.remove_tempdir(keep)

    def remove_tempdir(self, keep: bool) -> bool:
        if keep and any(self.tempdir.iterdir()):
            return True
        shutil.rmtree(self.tempdir, ignore_errors=True)
        return False


def _describe(entry: Path, run_pid: int, needle: bytes) -> str | None:
    try:
        stat = (entry / "stat").read_text()
        cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        environ = (entry / "environ").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    if state == "Z":
        return None
    if int(ppid) == run_pid or needle in environ.split(b"\0"):
        return f"pid {entry.name} (parent {ppid}): {cmdline[:160]}"
    return None
