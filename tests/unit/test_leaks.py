"""The run's leak checks (tests/leaks.py) see a process the run started, an orphaned grandchild
that carries the run's marker, and a file left in the run's temporary directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.leaks import MARK, RunGuard


def guard(tmp_path: Path) -> RunGuard:
    return RunGuard(tempdir=tmp_path, mark="test-mark-" + str(os.getpid()), pid=os.getpid(), previous_tempdir=None)


def test_a_live_child_is_a_leftover_and_a_reaped_one_is_not(tmp_path: Path) -> None:
    g = guard(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid in g.leftover_processes()
    finally:
        child.kill()
        child.wait()
    assert child.pid not in g.leftover_processes()


def test_an_orphaned_grandchild_is_found_by_the_run_marker(tmp_path: Path) -> None:
    g = guard(tmp_path)
    env = {**os.environ, MARK: g.mark}
    shell = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], env=env, capture_output=True, check=True)
    orphan = int(shell.stdout)
    try:
        assert orphan in g.leftover_processes()
    finally:
        os.kill(orphan, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while orphan in g.leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert orphan not in g.leftover_processes()


def test_files_left_in_the_run_temp_dir_are_leftovers_but_pytest_own_are_not(tmp_path: Path) -> None:
    g = guard(tmp_path)
    (tmp_path / "pytest-of-someone").mkdir()
    assert g.leftover_files() == []
    (tmp_path / "batchfleet-redis-abc").mkdir()
    assert g.leftover_files() == ["batchfleet-redis-abc"]
    assert g.leftovers(grace_s=0)[-1].endswith(": batchfleet-redis-abc")


def test_leftover_processes_are_stopped(tmp_path: Path) -> None:
    g = guard(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    g.stop_leftover_processes()
    assert child.wait(10) == -signal.SIGKILL


def test_the_run_temp_dir_is_removed_unless_kept_with_something_in_it(tmp_path: Path) -> None:
    empty, full, passed = tmp_path / "empty", tmp_path / "full", tmp_path / "passed"
    for d in (empty, full, passed):
        d.mkdir()
    (full / "pytest-of-someone").mkdir()
    (passed / "pytest-of-someone").mkdir()
    assert guard(empty).remove_tempdir(keep=True) is False  # nothing worth keeping
    assert guard(full).remove_tempdir(keep=True) is True  # a failed run's files
    assert guard(passed).remove_tempdir(keep=False) is False
    assert [empty.exists(), full.exists(), passed.exists()] == [False, True, False]
