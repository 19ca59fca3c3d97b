"""Which arq worker serves which shards, and over which connection.

On a single Redis one StationWorker serves every shard.  On a Redis Cluster arq cannot run on a
cluster client (its ``ArqRedis`` is a plain ``Redis``, and it runs MULTI/EXEC), so a worker process
runs one StationWorker per primary, on a connection to that primary, serving the shards whose
slots it owns: each of arq's commands and transactions then touches keys of one slot on the node
that holds it.  When the slot map changes (a failover, a resharding) a pinned connection gets MOVED
or loses its node; the worker process then rebuilds its StationWorkers from the new map.

The worker process makes each StationWorker's client itself (``open_pools``: the fleet's client,
``make_client``, as an ``ArqRedis``), pings it, and gives it to arq as ``redis_pool``, so arq never
calls its ``create_pool``: arq 0.28's drops the client it made, unclosed, when the first PING fails
or is cancelled, as happens to the StationWorkers still starting when a failover ends a sibling.
Every client opened here is closed with ``close_pool``, on every path.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit, urlunsplit

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from batchfleet.settings import Settings
from batchfleet.store import BatchStore, close_client, make_client
from batchfleet.workers.settings import json_dumps, json_loads

__all__ = ["Node", "arq_client", "close_pool", "node_groups", "node_url", "open_pools"]

Node = tuple[str, int]
"""(host, port) of a cluster primary."""


async def node_groups(store: BatchStore) -> list[tuple[Node | None, list[int]]]:
    """(primary, shards) per arq worker to run in this process; the primary is None on a single Redis
    (or Sentinel), where the settings name the server.  On a cluster the slot map comes from the
    store's cluster client, which follows failovers (and remembers every node)."""
    primaries = await store.primaries_by_shard()
    if primaries is None:
        return [(None, list(store.shards))]
    by_node: dict[Node, list[int]] = {}
    for shard, node in primaries.items():
        by_node.setdefault(node, []).append(shard)
    return [(node, group) for node, group in sorted(by_node.items())]


def node_url(url: str, node: Node) -> str:
    """``url`` pointed at ``node``: its scheme, user, password and db kept, host and port replaced."""
    parts = urlsplit(url)
    auth, at, _ = parts.netloc.rpartition("@")
    host, port = node
    where = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{auth}{at}{where}:{port}"))


def arq_client(settings: Settings, node: Node | None, *, queue_name: str, name: str) -> ArqRedis:
    """An arq client (not connected yet) of ``node``, or of the server the settings name: the fleet's
    client (``make_client``: reply timeout, keepalive, TLS, Sentinel) as an ``ArqRedis``."""
    url = settings.redis_url.get_secret_value()
    client = make_client(
        url if node is None else node_url(url, node),
        name=name,
        tls_ca_file=str(settings.redis_tls_ca_file) if settings.redis_tls_ca_file else None,
        socket_timeout_s=settings.redis_socket_timeout_s,  # a poll on a cut link fails instead of hanging
        sentinels=settings.sentinel_addresses(),
        sentinel_master=settings.redis_sentinel_master,
        redis_class=ArqRedis,
    )
    if not isinstance(client, ArqRedis):  # make_client returns a cluster client only when asked to
        raise TypeError(f"expected an ArqRedis, got {type(client).__name__}")
    client.job_serializer = json_dumps  # what arq's create_pool sets (the worker's own come from its settings)
    client.job_deserializer = json_loads
    client.default_queue_name = queue_name
    return client


async def open_pools(settings: Settings, store: BatchStore, *, name: str) -> list[tuple[ArqRedis, list[int]]]:
    """A pinged arq client and its shards per arq worker of ``node_groups``.  When one cannot be reached,
    or this is cancelled, every client opened so far is closed before the error propagates (the
    caller retries with the fleet's backoff)."""
    opened: list[tuple[ArqRedis, list[int]]] = []
    try:
        for node, shards in await node_groups(store):
            pool = arq_client(settings, node, queue_name=store.keys.queue(shards[0]), name=name)
            opened.append((pool, shards))
            await pool.ping()
    except BaseException:
        for pool, _ in opened:
            await close_pool(pool)
        raise
    return opened


async def close_pool(pool: ArqRedis) -> None:
    """Close a client of ``open_pools`` and every connection it holds; a Redis that is gone is no error."""
    with contextlib.suppress(RedisError, OSError):
        await close_client(pool)
