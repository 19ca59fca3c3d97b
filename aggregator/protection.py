"""How many replicas must hold a frozen upload body before it is sent: the configured count, or fewer
when fewer replicas could be promoted at all.

The upload WAIT (``BATCHFLEET_UPLOAD_WAIT_REPLICAS``) guards one hazard: a failover that promotes a
replica which never received a body that was already sent, so that the next owner freezes and sends a
different body under the same batch id.  Only a replica that a failover could promote can cause it.
So the count a body must reach is ``min(configured, promotable)``, where *promotable* is what the
failover authority itself would pick from: with Sentinel the replicas it lists as up (not ``s_down``,
``o_down``, ``disconnected``) with a priority above 0; on a Redis Cluster the primary's replicas not
flagged ``fail``.  A replica cut off from the primary but still seen by Sentinel (or the cluster) stays
counted, so its WAIT holds the upload back as before; a replica lost for good stops counting once
Sentinel marks it down (``down-after-milliseconds``), and uploads go on.  A single Redis without
Sentinel has no such authority: the configured count stands.

A lower count is used only once the view is settled: the primary is not in doubt (Sentinel flags it
plain ``master``, the cluster does not flag it ``fail``), and the primary and its promotable replicas
have stayed the same for ``SETTLED_S``.  Right after a failover an aggregator may still write to the old
primary for up to half a second (until its client asks the Sentinels again, store/base.py), while the
Sentinels already list the new primary's replicas: a count read then says nothing about the node the
body went to.  The view is read at most every ``VIEW_TTL_S`` per shard (``SENTINEL MASTER`` and
``SENTINEL REPLICAS``, or ``CLUSTER NODES``), and afresh after a WAIT that fell short.

While the count in force is below the configured one, uploads run with less protection than
configured: the aggregator's heartbeat says so (``status``, ``health``, the web console),
``batchfleet_upload_reduced_protection_total`` counts them, and a WARNING is logged when it starts and
when full protection is back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from batchfleet import metrics
from batchfleet.retry import REDIS_UNAVAILABLE, describe
from batchfleet.store import BatchStore

__all__ = ["SETTLED_S", "VIEW_TTL_S", "UploadProtection"]

log = logging.getLogger(__name__)
VIEW_TTL_S = 1.0
SETTLED_S = 2.0  # a view unchanged this long is trusted: 4x the Sentinel client's 0.5 s re-check of the primary


@dataclass
class _View:
    read_at: float
    seen: tuple[str, int] | None  # (primary, promotable replicas), or None: no authority / primary in doubt
    since: float  # when ``seen`` was first read as it is


@dataclass
class UploadProtection:
    store: BatchStore
    configured: int
    _views: dict[int, _View] = field(default_factory=dict)
    reduced: dict[int, int] = field(default_factory=dict)  # shard -> the count in force, while below configured

    async def needed(self, batch_id: str, *, fresh: bool = False) -> int:
        """The replicas this batch's body must reach before it is sent."""
        shard = self.store.keys.shard_of_batch(batch_id)
        now = time.monotonic()
        view = self._views.get(shard)
        if view is None or fresh or now - view.read_at >= VIEW_TTL_S:
            try:
                seen = await self.store.replica_view(batch_id)
            except REDIS_UNAVAILABLE as exc:  # no view: the configured count stands
                log.info("replicas of shard %d not known (%s): asking for the configured %d", shard, describe(exc), self.configured)
                seen = None
            view = _View(now, seen, now if view is None or view.seen != seen else view.since)
            self._views[shard] = view
        if view.seen is None or now - view.since < SETTLED_S:
            return self.configured
        return min(self.configured, view.seen[1])

    def sent(self, batch_id: str, topic: str, needed: int) -> None:
        """A body went out once ``needed`` replicas held it: note whether that was less than configured."""
        shard = self.store.keys.shard_of_batch(batch_id)
        if needed < self.configured:
            metrics.UPLOAD_REDUCED_PROTECTION.labels(topic).inc()
            if self.reduced.get(shard) != needed:
                log.warning(
                    "uploads of shard %d run with less protection than configured: bodies are sent once %d replica(s)"
                    " hold them, BATCHFLEET_UPLOAD_WAIT_REPLICAS=%d (only %d replica(s) could be promoted in a failover;"
                    " docs/runbook.md, 'Uploads with less protection')",
                    shard,
                    needed,
                    self.configured,
                    needed,
                )
            self.reduced[shard] = needed
        elif self.reduced.pop(shard, None) is not None:
            log.warning("uploads of shard %d are fully protected again: %d replica(s) hold each body", shard, needed)

    def info(self) -> dict[str, Any]:
        """For the heartbeat: the protection in force when it is less than configured."""
        if not self.reduced:
            return {}
        lowest = min(self.reduced.values())
        return {"upload_protection": {"configured": self.configured, "in_force": lowest, "shards": sorted(self.reduced)}}
