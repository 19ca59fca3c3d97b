"""The demo's station processors (``scripts/demo`` sets ``BATCHFLEET_PROCESSOR=batchfleet_dev.demo_processor:DemoModel``;
it is demo code and never a default).

``DemoModel`` is a model processor (README, "Model processors"): ``setup`` loads its "weights" once per
worker process and warms up, ``process_group`` answers a whole job's stations in one call, ``teardown``
says goodbye.  Deterministic by station number so the demo shows every outcome: ...7 fails (an exception
instance: only that station), ...3 returns None ("no output"), every station whose number is 9 mod 17
fails as a model that did not converge, the rest get a made-up ``forecast_kw``.  One group call takes
50-450 ms, like a small model's inference.

``process_station`` is the plain-function processor of earlier demos (every station on its own, some
slower than the 5 s deadline: missing, then late).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["DemoModel", "process_station"]

log = logging.getLogger(__name__)


def _number(station_id: str) -> int:
    digits = "".join(ch for ch in station_id if ch.isdigit())
    return int(digits) if digits else 0


class DemoModel:
    """A model with a life cycle and group calls."""

    def __init__(self) -> None:
        self.factor = 0.0  # no weights until setup

    async def setup(self) -> None:
        await asyncio.sleep(0.2)  # "loading the weights"
        self.factor = 1.05
        await self.process_group({"warm-up-1": [{"power_kw": 1.0}]})
        log.info("demo model ready (factor %.2f)", self.factor)

    async def process_group(self, stations: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any] | BaseException | None]:
        await asyncio.sleep(0.05 + (len(stations) % 5) * 0.1)  # one inference call for the whole group
        return {station_id: self._one(station_id, records) for station_id, records in stations.items()}

    def _one(self, station_id: str, records: list[dict[str, Any]]) -> dict[str, Any] | BaseException | None:
        n = _number(station_id)
        if n % 17 == 9:
            return TimeoutError(f"the model did not converge for {station_id}")
        if n % 10 == 7:
            return RuntimeError(f"inverter telemetry for {station_id} failed validation")
        if n % 10 == 3:
            return None
        power = sum(float(r.get("power_kw", 0.0)) for r in records)
        forecast = round(power * self.factor, 3)
        return {"stationId": station_id, "records": len(records), "power_kw": round(power, 3), "forecast_kw": forecast}

    def teardown(self) -> None:
        log.info("demo model unloaded")


async def process_station(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    n = _number(station_id)
    if n % 17 == 9:
        await asyncio.sleep(8)  # slower than the deadline: missing, then late
    await asyncio.sleep(0.05 + (n % 5) * 0.1)
    if n % 10 == 7:
        raise RuntimeError(f"inverter telemetry for {station_id} failed validation")
    if n % 10 == 3:
        return None
    power = sum(float(r.get("power_kw", 0.0)) for r in records)
    return {"stationId": station_id, "records": len(records), "power_kw": round(power, 3), "forecast_kw": round(power * 1.05, 3)}
