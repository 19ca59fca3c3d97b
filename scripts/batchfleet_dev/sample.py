"""Sample station data for the demo, the benchmark and the chaos run (produces to Kafka)."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

__all__ = ["station_ids", "station_message"]


def station_ids(count: int, start: int = 1) -> list[str]:
    return [f"S{n:03d}" for n in range(start, start + count)]


def station_record(station_id: str, rng: random.Random) -> dict[str, Any]:
    return {
        "stationId": station_id,
        "ts": round(time.time(), 3),
        "power_kw": round(rng.uniform(50, 950), 2),
        "voltage_v": round(rng.uniform(380, 420), 1),
        "irradiance_wm2": round(rng.uniform(0, 1100), 1),
    }


def station_message(stations: list[str], rng: random.Random | None = None, field: str = "stationData") -> bytes:
    rng = rng or random.Random()
    return orjson.dumps({field: [station_record(s, rng) for s in stations]})
