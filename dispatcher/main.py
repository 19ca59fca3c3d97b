"""Entry point of one dispatcher process."""

from __future__ import annotations

import asyncio
import os
import socket

from batchfleet.dispatcher.service import Dispatcher
from batchfleet.errors import ConfigError
from batchfleet.metrics import serve_metrics
from batchfleet.runtime import freeze_startup_heap, wait_for_redis
from batchfleet.settings import Settings
from batchfleet.store import BatchStore

__all__ = ["serve"]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    if not settings.topics:
        raise ConfigError("BATCHFLEET_TOPICS is not set: name the topics to consume, comma-separated (or pass --topics)")
    serve_metrics(settings.metrics_port, settings.metrics_host)
    name = f"dispatcher@{socket.gethostname()}:{os.getpid()}"
    async with BatchStore.from_settings(settings, name="batchfleet-dispatcher") as store:
        await wait_for_redis(store, stop, settings.redis_location())
        freeze_startup_heap()
        await Dispatcher(settings, store, name=name).run(stop)
