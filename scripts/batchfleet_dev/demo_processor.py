"""The demo's station processor (``BATCHFLEET_PROCESSOR=batchfleet_dev.demo_processor:process_station``,
set by ``scripts/demo``; it is demo code and never a default).

Deterministic by station number so the demo shows every outcome: ...7 raises, ...3 returns None
("no output"), every station whose number is 9 mod 17 is slower than the 5 s deadline, the rest
return a made-up ``power_kw`` after 50-450 ms.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["process_station"]


def _number(station_id: str) -> int:
    digits = "".join(ch for ch in station_id if ch.isdigit())
    return int(digits) if digits else 0


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
