"""The benchmark's peer: a Celery chord of the same no-op work, with Redis as broker and result backend.

Runs in its own virtual environment (``.venv-celery``, created by the benchmark on first use: Celery's
dependencies are its own business), so this module imports nothing of batchfleet.  Two commands:

- ``celery -A batchfleet_dev.celery_peer worker --pool prefork --concurrency 2``: the worker;
- ``python -m batchfleet_dev.celery_peer produce CHORDS SIZE OUT [TASK]``: submits ``CHORDS`` chords of ``SIZE``
  no-op tasks each (``TASK`` ``cpu``: the CPU-bound station of ``scripts/bench --models`` instead)
  (header: one task per station; body: a callback that notes when the chord finished),
  all at once, then waits for every callback and writes one JSON line per chord to ``OUT``,
  ``{"n": SIZE, "done": finished at (s)}``, and a last line with its own CPU time, ``{"cpu_s": ...}``.

The broker and backend URL comes from ``BFBENCH_CELERY_REDIS`` (the benchmark's own redis-server).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import Celery, chord

from batchfleet_dev.bench_model_fns import cpu_station

app = Celery("bfbench", broker=os.environ.get("BFBENCH_CELERY_REDIS", "redis://127.0.0.1:6379/0"))
app.conf.update(
    result_backend=os.environ.get("BFBENCH_CELERY_REDIS", "redis://127.0.0.1:6379/0"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


def _noop(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The same work as the batchfleet bench's processor: none; the result names the station."""
    return {"stationId": station_id, "t": time.time()}


def _finished(results: list[dict[str, Any]]) -> float:
    """The chord's callback: when every member had reported."""
    return time.time()


noop = app.task(name="bfbench.noop")(_noop)
cpu = app.task(name="bfbench.cpu")(cpu_station)
finished = app.task(name="bfbench.finished")(_finished)


def produce(chords: int, size: int, out: str, task: str = "noop") -> None:
    member = cpu if task == "cpu" else noop
    pending = [
        chord([member.s(f"S{i:04d}", [{"stationId": f"S{i:04d}", "v": i}]) for i in range(size)])(finished.s())
        for _ in range(chords)
    ]
    with open(out, "w", encoding="utf-8") as f:
        for result in pending:
            done = float(result.get(timeout=600, interval=0.01))
            f.write(json.dumps({"n": size, "done": done}) + "\n")
        f.write(json.dumps({"cpu_s": time.process_time()}) + "\n")


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or sys.argv[1] != "produce":
        sys.exit("usage: python -m batchfleet_dev.celery_peer produce CHORDS SIZE OUT [TASK]")
    produce(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *sys.argv[5:])
