"""Entry point of one dispatcher process."""

from __future__ import annotations

import asyncio
import os
import socket

from batchfleet.dispatcher.service import Dispatcher
from batchfleet.metrics import serve_metrics
from batchfleet.settings import Settings
from batchfleet.store import BatchStore

__all__ = ["serve"]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    if not settings.topics:
        from batchfleet.errors import ConfigError

        raise ConfigError("no topics to consume: set BATCHFLEET_TOPICS or pass --topics")
    serve_metrics(settings.metrics_port)
    name = f"dispatcher@{socket.gethostname()}:{os.getpid()}"
    async with BatchStore.from_settings(settings, name="batchfleet-dispatcher") as store:
        await Dispatcher(settings, store, name=name).run(stop)
