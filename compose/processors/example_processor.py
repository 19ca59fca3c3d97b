"""An example station processor for the compose stack: replace it with yours.

compose.yaml mounts this folder into the worker containers at /opt/batchfleet/processors, which the
image puts on PYTHONPATH, and sets ``BATCHFLEET_PROCESSOR=example_processor:process_station``.  Your own
processor goes here too (or into an image built FROM batchfleet that pip-installs your package);
then point ``BATCHFLEET_PROCESSOR`` at it in ``.env``.

The contract (README, "Station processors"): ``process(station_id, records) -> dict | None``, sync or
async; a dict is the station's result, None means "no output", an exception fails the station.
"""

from __future__ import annotations

from typing import Any


def process_station(station_id: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Sum the ``power_kw`` readings of the station (the compose producer's sample messages)."""
    readings = [float(r["power_kw"]) for r in records if "power_kw" in r]
    if not readings:
        return None
    return {"stationId": station_id, "readings": len(readings), "power_kw": round(sum(readings), 3)}
