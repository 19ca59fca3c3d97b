"""The client, its construction from settings, and the small decoding helpers every part shares."""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from batchfleet.errors import LayoutError
from batchfleet.keys import Keys
from batchfleet.settings import Settings
from batchfleet.store.scripts import Scripts

__all__ = ["LAYOUT_SCHEME", "Client", "StoreBase", "aw", "close_client", "make_client", "pairs", "text"]


LAYOUT_SCHEME = "1"  # the key layout of batchfleet/keys.py: bump when key names or the shard mapping change

T = TypeVar("T")


def text(value: bytes | str | int) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def pairs(flat: Sequence[bytes]) -> dict[str, bytes]:
    return {text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


async def aw(value: Awaitable[T] | T) -> T:
    """redis-py types its commands as sync-or-async; the asyncio client always returns awaitables."""
    if inspect.isawaitable(value):
        return await value
    return value


Client = aioredis.Redis | aioredis.RedisCluster
"""A single Redis (or a Sentinel-managed primary) or a Redis Cluster: the store uses only what both
offer — single-slot scripts, single-key commands, non-transactional pipelines."""


class _Cluster(aioredis.RedisCluster):
    """redis-py's cluster client, remembering every node it has seen.

    After a connection error redis-py drops the failed node from its startup nodes and closes every
    connection; blocking commands in flight on healthy nodes (an aggregator's BLPOP per shard) then
    fail too and drop their nodes, until no startup node is left and the client can never find the
    cluster again.  This client puts every node it ever saw back before each re-initialization."""

    _seen: dict[str, Any]

    async def initialize(self) -> aioredis.RedisCluster:
        manager = self.nodes_manager
        seen = self.__dict__.setdefault("_seen", {})
        for name, node in seen.items():
            manager.startup_nodes.setdefault(name, node)
        await super().initialize()
        seen.update(manager.nodes_cache)
        return self


def make_client(
    url: str,
    *,
    name: str = "batchfleet",
    tls_ca_file: str | None = None,
    cluster: bool = False,
    socket_timeout_s: float | None = None,
    sentinels: Sequence[tuple[str, int]] = (),
    sentinel_master: str = "",
    redis_class: type[aioredis.Redis] = aioredis.Redis,
) -> Client:
    """A redis-py asyncio client; with ``cluster`` a ``RedisCluster`` that discovers every node from
    the one ``url`` names and follows MOVED/ASK and failovers by itself; with ``sentinels`` a client
    of the primary those Sentinels name for ``sentinel_master`` (asked again after every connection
    error, so it follows a failover; ``url`` then gives only user, password, db and the scheme).
    A dropped connection is re-opened on the next command; the services' own loops retry with
    backoff (redis-py's Retry would also retry authentication errors, which hangs a misconfigured
    client instead of failing).
    ``socket_timeout_s`` bounds the wait for a reply: without it, a command sent into a cut link
    waits for TCP's retransmission backoff after the heal (measured: an aggregator cut for 30 s
    uploaded again 25.9 s after the heal; 2.1 s with the timeout), or ~15 minutes if the peer never
    comes back.
    ``redis_class``: the class of a single-node or Sentinel client (the worker passes arq's ``ArqRedis``).
    Close a client with :func:`close_client`."""
    tls: dict[str, Any] = {"ssl_ca_certs": tls_ca_file} if tls_ca_file and url.startswith("rediss://") else {}
    options: dict[str, Any] = {
        **tls,
        "decode_responses": False,
        "socket_connect_timeout": 5,
        "socket_timeout": socket_timeout_s,
        "socket_keepalive": True,
        "client_name": name,
        # no CLIENT SETINFO on connect: the least-privilege ACL users (batchfleet/acl.py) may not send it
        "lib_name": None,
        "lib_version": None,
    }
    if cluster:
        return cast(aioredis.RedisCluster, _Cluster.from_url(url, **options))
    if sentinels:
        return _sentinel_client(url, sentinels, sentinel_master, options, redis_class)
    return cast(aioredis.Redis, redis_class.from_url(url, **options, health_check_interval=15))


_SENTINEL_CHECK_S = 0.5  # how often a pool asks the Sentinels which server is the primary


class _FollowingSentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, made to leave an old primary within about half a second.

    Sentinel turns the old primary into a replica only some 8 s after it promoted another (after a
    ``SENTINEL FAILOVER``, or a partition that heals); until then the old primary still accepts
    writes, and redis-py keeps using every connection it has to it: those writes are lost when it is
    turned.  This pool asks the Sentinels at most every 0.5 s when a connection is checked out and
    disconnects a connection that leads anywhere but the primary they name, so every command of the
    process goes to the new primary from then on.  If the Sentinels do not answer, the connections
    stay as they are (the primary may well be fine)."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._checked_at = 0.0

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        now = time.monotonic()
        if now - self._checked_at >= _SENTINEL_CHECK_S:
            self._checked_at = now
            with contextlib.suppress(MasterNotFoundError, RedisConnectionError, RedisTimeoutError, OSError):
                await self.get_master_address()  # type: ignore[no-untyped-call]  # a change drops the idle ones
        where = (getattr(connection, "host", None), getattr(connection, "port", None))
        if connection.is_connected and self.master_address is not None and where != tuple(self.master_address):
            await connection.disconnect()  # connected to a former primary: reconnect to the current one
        await super().ensure_connection(connection)


def _sentinel_client(
    url: str, sentinels: Sequence[tuple[str, int]], master: str, options: dict[str, Any], redis_class: type[aioredis.Redis]
) -> aioredis.Redis:
    parsed = parse_url(url)
    auth = {k: parsed[k] for k in ("username", "password", "db") if parsed.get(k) is not None}
    tls: dict[str, Any] = {"ssl": True} if url.startswith("rediss://") else {}
    if "ssl_ca_certs" in options:
        tls["ssl_ca_certs"] = options.pop("ssl_ca_certs")
    sentinel = Sentinel(list(sentinels), sentinel_kwargs={"socket_connect_timeout": 5, **tls}, **options, **auth, **tls)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(
        master, redis_class=redis_class, connection_pool_class=_FollowingSentinelPool, health_check_interval=15
    )
    return cast(aioredis.Redis, client)


async def close_client(client: Client) -> None:
    """Close every connection ``client`` opened: with Sentinel also those to the Sentinels, which
    redis-py's ``aclose`` leaves open (they would be found unclosed when garbage-collected)."""
    pool = getattr(client, "connection_pool", None)
    try:
        await client.aclose()
    finally:
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def _promotable(replica: dict[str, Any]) -> bool:
    """A replica Sentinel may promote: up, reachable, priority above 0 (redis-py's parsed SENTINEL REPLICAS)."""
    down = replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected")
    return not down and int(replica.get("slave-priority", 100)) > 0


class StoreBase:
    """One client, the fleet's key names and its transition scripts; an async context manager."""

    def __init__(self, client: Client, *, prefix: str = "bf", shards: int = 1) -> None:
        self.redis = client
        self.keys = Keys(prefix, shards)
        self.scripts = Scripts(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "bf",
        shards: int = 1,
        cluster: bool = False,
        name: str = "batchfleet",
        tls_ca_file: str | None = None,
        socket_timeout_s: float | None = None,
        sentinels: Sequence[tuple[str, int]] = (),
        sentinel_master: str = "",
    ) -> Self:
        client = make_client(
            url,
            name=name,
            tls_ca_file=tls_ca_file,
            cluster=cluster,
            socket_timeout_s=socket_timeout_s,
            sentinels=sentinels,
            sentinel_master=sentinel_master,
        )
        return cls(client, prefix=prefix, shards=shards)

    @classmethod
    def from_settings(cls, settings: Settings, *, name: str = "batchfleet") -> Self:
        ca = str(settings.redis_tls_ca_file) if settings.redis_tls_ca_file else None
        return cls.from_url(
            settings.redis_url.get_secret_value(),
            prefix=settings.key_prefix,
            shards=settings.shards,
            cluster=settings.redis_cluster,
            name=name,
            tls_ca_file=ca,
            socket_timeout_s=settings.redis_socket_timeout_s,
            sentinels=settings.sentinel_addresses(),
            sentinel_master=settings.redis_sentinel_master,
        )

    @property
    def shards(self) -> range:
        return range(self.keys.shards)

    async def each_shard(self, add: Callable[[Any, int], Any]) -> list[Any]:
        """One pipeline with ``add(pipe, shard)`` queued for every shard; the replies in shard order
        (on a cluster, redis-py sends each node its part)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards:
                add(pipe, shard)
            return list(await pipe.execute())

    async def replica_view(self, batch_id: str) -> tuple[str, int] | None:
        """(the primary, how many replicas a failover could promote in its place) for the primary that
        holds the batch, as the failover authority sees it: with Sentinel, the primary it names
        (``ip:port``) and the replicas the first Sentinel that answers lists as up (not ``s_down``,
        ``o_down`` or ``disconnected``) with a priority above 0, as Sentinel picks them; on a Redis
        Cluster, the primary's node id and its replicas not flagged ``fail``.  None when nothing
        promotes a replica (a single Redis), no Sentinel answered, or the primary itself is in doubt
        (down, or a failover in progress): the configured count stands then."""
        if isinstance(self.redis, aioredis.RedisCluster):
            return await self._cluster_view(self.redis, batch_id)
        pool = getattr(self.redis, "connection_pool", None)
        if not isinstance(pool, SentinelConnectionPool):
            return None
        for sentinel in pool.sentinel_manager.sentinels:
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                master = await sentinel.sentinel_master(pool.service_name)
                replicas = await sentinel.sentinel_slaves(pool.service_name)
                if master.get("flags") != "master":  # s_down, o_down, failover_in_progress, ...
                    return None
                return f"{master['ip']}:{master['port']}", sum(1 for r in replicas if _promotable(r))
        return None

    async def _cluster_view(self, client: aioredis.RedisCluster, batch_id: str) -> tuple[str, int] | None:
        node = client.get_node_from_key(self.keys.batch(batch_id))
        if node is None:
            return None
        nodes: dict[str, dict[str, Any]] = await client.execute_command("CLUSTER NODES", target_nodes=node)
        primary = nodes.get(f"{node.host}:{node.port}")
        if primary is None or "fail" in primary["flags"] or "fail?" in primary["flags"]:
            return None
        up = sum(1 for n in nodes.values() if n.get("master_id") == primary["node_id"] and "fail" not in n["flags"].split(","))
        return str(primary["node_id"]), up

    async def primaries_by_shard(self) -> dict[int, tuple[str, int]] | None:
        """On a Redis Cluster: the (host, port) of the primary that holds each shard's slot, from the
        client's current slot map (refreshed after a failover); None on a single Redis."""
        if not isinstance(self.redis, aioredis.RedisCluster):
            return None
        await self.redis.initialize()
        nodes = {shard: self.redis.get_node_from_key(self.keys.queue(shard)) for shard in self.shards}
        return {shard: (node.host, int(node.port)) for shard, node in nodes.items()}

    async def check_layout(self) -> None:
        """Record this fleet's layout (shard count, tag scheme) on first start; refuse to run against
        a Redis that holds the same prefix with another layout (its batches, jobs and offsets would
        be looked for under the wrong shards).  Raises LayoutError."""
        ours = {"shards": str(self.keys.shards), "scheme": LAYOUT_SCHEME}
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, value in ours.items():
                pipe.hsetnx(self.keys.layout, name, value)
            pipe.hgetall(self.keys.layout)
            *_, stored = await pipe.execute()
        found = {text(k): text(v) for k, v in stored.items()}
        if any(found.get(name) != value for name, value in ours.items()):
            raise LayoutError(
                f"Redis holds a batchfleet layout for prefix {self.keys.prefix!r} with "
                f"{found.get('shards')} shard(s) (scheme {found.get('scheme')}); this process has BATCHFLEET_SHARDS="
                f"{self.keys.shards} (scheme {LAYOUT_SCHEME}). Start it with the stored value, or drain and reset the "
                "layout to change it (docs/runbook.md, 'Changing the shard count')"
            )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client and, with Sentinel, the clients it asks the Sentinels with (close_client)."""
        await close_client(self.redis)

    async def server_time_ms(self) -> int:
        """Redis server time: the only clock that deadlines, leases and retention use."""
        seconds, micros = await aw(self.redis.time())
        return int(seconds) * 1000 + int(micros) // 1000
