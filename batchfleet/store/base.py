"""The client, its construction from settings, and the small decoding helpers every part shares."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import redis.asyncio as aioredis

from batchfleet.keys import Keys
from batchfleet.settings import Settings
from batchfleet.store.scripts import Scripts

__all__ = ["StoreBase", "aw", "make_client", "pairs", "text"]

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


def make_client(url: str, *, name: str = "batchfleet", tls_ca_file: str | None = None) -> aioredis.Redis:
    """A redis-py asyncio client.  A dropped connection is re-opened by the pool on the next command;
    the services' own loops retry with backoff (redis-py's Retry would also retry authentication
    errors, which hangs a misconfigured client instead of failing loudly)."""
    tls: dict[str, Any] = {"ssl_ca_certs": tls_ca_file} if tls_ca_file and url.startswith("rediss://") else {}
    return cast(
        aioredis.Redis,
        aioredis.Redis.from_url(
            url,
            **tls,
            decode_responses=False,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=15,
            client_name=name,
        ),
    )


class StoreBase:
    """One client, the fleet's key names and its transition scripts; an async context manager."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "bf", queue_name: str = "bf:queue") -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.queue_name = queue_name
        self.scripts = Scripts(client)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "bf", queue_name: str = "bf:queue", name: str = "batchfleet", tls_ca_file: str | None = None
    ) -> Self:
        return cls(make_client(url, name=name, tls_ca_file=tls_ca_file), prefix=prefix, queue_name=queue_name)

    @classmethod
    def from_settings(cls, settings: Settings, *, name: str = "batchfleet") -> Self:
        ca = str(settings.redis_tls_ca_file) if settings.redis_tls_ca_file else None
        return cls.from_url(
            settings.redis_url.get_secret_value(),
            prefix=settings.key_prefix,
            queue_name=settings.queue_name,
            name=name,
            tls_ca_file=ca,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def server_time_ms(self) -> int:
        """Redis server time: the only clock that deadlines, leases and retention use."""
        seconds, micros = await aw(self.redis.time())
        return int(seconds) * 1000 + int(micros) // 1000
