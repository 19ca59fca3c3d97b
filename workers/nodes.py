"""Which arq worker serves which shards, and over which connection.

On a single Redis one StationWorker serves every shard.  On a Redis Cluster arq cannot run on a
cluster client (its ``ArqRedis`` is a plain ``Redis``, and it runs MULTI/EXEC), so a worker process
runs one StationWorker per primary, on a connection to that primary, serving the shards whose
slots it owns: each of arq's commands and transactions then touches keys of one slot on the node
that holds it.  When the slot map changes (a failover, a resharding) a pinned connection gets MOVED
or loses its node; the worker process then rebuilds its StationWorkers from the new map.
"""

from __future__ import annotations

import dataclasses

from arq.connections import RedisSettings

from batchfleet.store import BatchStore

__all__ = ["node_groups"]


async def node_groups(store: BatchStore, base: RedisSettings) -> list[tuple[RedisSettings, list[int]]]:
    """(connection settings, shards) per arq worker to run in this process.  On a cluster the slot map
    comes from the store's cluster client, which follows failovers (and remembers every node)."""
    primaries = await store.primaries_by_shard()
    if primaries is None:
        return [(base, list(store.shards))]
    by_node: dict[tuple[str, int], list[int]] = {}
    for shard, node in primaries.items():
        by_node.setdefault(node, []).append(shard)
    return [(dataclasses.replace(base, host=host, port=port), group) for (host, port), group in sorted(by_node.items())]
