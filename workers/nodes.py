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

import redis.asyncio as aioredis
from arq.connections import RedisSettings

from batchfleet.keys import Keys
from batchfleet.store.base import Client

__all__ = ["node_groups"]


async def node_groups(client: Client, keys: Keys, base: RedisSettings) -> list[tuple[RedisSettings, list[int]]]:
    """(connection settings, shards) per arq worker to run in this process.  On a cluster the slot map
    comes from the store's cluster client, which follows failovers (and remembers every node)."""
    shards = list(range(keys.shards))
    if not isinstance(client, aioredis.RedisCluster):
        return [(base, shards)]
    await client.initialize()
    by_node: dict[tuple[str, int], list[int]] = {}
    for shard in shards:
        node = client.get_node_from_key(keys.queue(shard))
        by_node.setdefault((node.host, int(node.port)), []).append(shard)
    return [(dataclasses.replace(base, host=host, port=port), group) for (host, port), group in sorted(by_node.items())]
