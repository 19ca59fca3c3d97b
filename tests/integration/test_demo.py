"""scripts/demo against the real stack: Ctrl-C on the terminal stops everything it started within
3 s, the fleet before the stack, with no traceback in any log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchfleet_dev import SCRIPTS


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _uploading(root: Path) -> bool:
    return any(p.stat().st_size > 0 for p in root.glob(".batchfleet/demo-*/uploads.jsonl"))


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_and_everything_it_started_within_3s(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFLEET_")} | {"PYTHONPATH": str(SCRIPTS)}
    # Its own session, like a shell's foreground job: a terminal's Ctrl-C is SIGINT to the process group.
    demo = subprocess.Popen(
        [sys.executable, "-m", "batchfleet_dev.demo", "--plain"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not _uploading(tmp_path):  # bounded poll for the first upload
            assert time.monotonic() < deadline and demo.poll() is None, "the demo uploaded nothing within 60 s"
            time.sleep(0.1)
        started = _children(demo.pid)
        assert len(started) == 7, started  # redis-server, broker, dispatcher, 2 workers, aggregator, web console
        interrupted = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
        took_s = time.monotonic() - interrupted
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        demo.stdout.close()  # type: ignore[union-attr]
        left = [pid for pid in started if _alive(pid)]
        for pid in left:  # what the demo started runs in sessions of its own: not reached by killpg
            os.kill(pid, signal.SIGKILL)
    print(f"\ndemo: Ctrl-C -> every process gone after {took_s:.1f}s")
    assert demo.returncode == 0, output.decode()[-2000:]
    assert took_s <= 3.0
    assert not left, "the demo left processes behind"
    assert b"Traceback" not in output
    [workdir] = tmp_path.glob(".batchfleet/demo-*")
    for log in workdir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name}: {text[-2000:]}"
        # the fleet stopped while Redis and Kafka still ran: no role noticed them going away
        assert "redis unavailable" not in text and "Unable connect" not in text, f"{log.name}: {text[-2000:]}"
