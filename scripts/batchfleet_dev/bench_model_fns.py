"""The models of ``scripts/bench --models``, importable without batchfleet (the Celery peer's venv
imports ``cpu_station`` too).

- ``cpu_station``: CPU-bound pure Python, ``BFBENCH_CPU_LOOPS`` iterations (the bench calibrates it to
  ~5 ms); the result carries its own thread CPU time and wall time (``own_ms``, ``wall_ms``).
- ``NumpyGroupModel`` / ``NumpyStationModel``: the same small numpy network (``DEPTH`` layers of width
  ``WIDTH``) with ``process_group`` (one vectorized call per job) or ``process`` only (a call per
  station): a model whose call is dominated by per-call overhead, as small onnxruntime or sklearn models are.
- ``BigModel``: 200 MB of weights loaded in ``setup`` (the memory figures); ``BFBENCH_BIG_MODEL_FILE``
  set: read with ``mmap`` from that .npy file instead.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["BIG_MODEL_MB", "BigModel", "NumpyGroupModel", "NumpyStationModel", "cpu_station", "cpu_work"]

BIG_MODEL_MB = 200
DEPTH = 40
WIDTH = 32
_LOOPS = int(os.environ.get("BFBENCH_CPU_LOOPS", "20000"))


def cpu_work(loops: int) -> int:
    acc = 0
    for i in range(loops):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def cpu_station(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    value = cpu_work(_LOOPS)
    own_ms = (time.thread_time() - cpu0) * 1000
    return {
        "stationId": station_id,
        "v": value,
        "own_ms": own_ms,
        "wall_ms": (time.perf_counter() - wall0) * 1000,
        "t": time.time(),
    }


class _Numpy:
    def setup(self) -> None:
        import numpy as np

        rng = np.random.default_rng(7)
        self.np = np
        self.layers = [(rng.standard_normal((WIDTH, WIDTH)) / WIDTH**0.5, rng.standard_normal(WIDTH) * 0.1) for _ in range(DEPTH)]
        self.out = rng.standard_normal(WIDTH)
        self.infer(self.features({"warm-up": [{"power_kw": 1.0}]}))

    def features(self, stations: dict[str, list[dict[str, Any]]]) -> Any:
        np = self.np
        x = np.zeros((len(stations), WIDTH))
        for row, records in enumerate(stations.values()):
            x[row, 0] = sum(float(r.get("power_kw", 0.0)) for r in records) / 1000
            x[row, 1] = len(records)
        return x

    def infer(self, x: Any) -> Any:
        np = self.np
        for w, b in self.layers:
            x = np.tanh(x @ w + b)
        return x @ self.out


class NumpyGroupModel(_Numpy):
    def process_group(self, stations: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        y = self.infer(self.features(stations))
        now = time.time()
        return {sid: {"stationId": sid, "y": float(v), "t": now} for sid, v in zip(stations, y, strict=True)}


class NumpyStationModel(_Numpy):
    def process(self, station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        y = self.infer(self.features({station_id: records}))
        return {"stationId": station_id, "y": float(y[0]), "t": time.time()}


class BigModel:
    """200 MB of float64 weights, every page touched (loaded, not just reserved)."""

    def setup(self) -> None:
        import numpy as np

        path = os.environ.get("BFBENCH_BIG_MODEL_FILE")
        if path:
            self.weights = np.load(path, mmap_mode="r")
        else:
            self.weights = np.full(BIG_MODEL_MB * 1024 * 1024 // 8, 0.5)
        self.checksum = float(self.weights[::512].sum())  # reads every page (4 KiB = 512 floats)

    def process(self, station_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"stationId": station_id, "checksum": self.checksum}
