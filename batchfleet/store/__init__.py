"""BatchStore: the one class that talks to Redis, in parts by audience.

- :mod:`~batchfleet.store.transitions`: the state transitions (one Lua script each) and the reads
  the dispatcher, workers and aggregator need;
- :mod:`~batchfleet.store.reads`: operator reads (status, inspect, the web console);
- :mod:`~batchfleet.store.registry`: process heartbeats;
- :mod:`~batchfleet.store.scripts`: loading the scripts with their shared prelude, checking replies;
- :mod:`~batchfleet.store.base`: the client and its construction from settings.

Services call typed methods of :class:`BatchStore` and never issue raw Redis commands.
"""

from __future__ import annotations

from batchfleet.store.base import close_client, make_client
from batchfleet.store.reads import OperatorReads
from batchfleet.store.registry import ProcessRegistry
from batchfleet.store.transitions import GROUP_JOB, STATION_JOB, Transitions, group_job_prefix, station_job, station_job_prefix

__all__ = [
    "GROUP_JOB",
    "STATION_JOB",
    "BatchStore",
    "close_client",
    "group_job_prefix",
    "make_client",
    "station_job",
    "station_job_prefix",
]


class BatchStore(Transitions, OperatorReads, ProcessRegistry):
    """All of batchfleet's Redis state, behind one typed surface."""
