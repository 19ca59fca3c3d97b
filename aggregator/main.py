"""Entry point of one aggregator process."""

from __future__ import annotations

import asyncio
import os
import socket

from batchfleet.aggregator.service import Aggregator
from batchfleet.aggregator.uploaders import make_uploader
from batchfleet.metrics import serve_metrics
from batchfleet.settings import Settings
from batchfleet.store import BatchStore

__all__ = ["serve"]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    serve_metrics(settings.metrics_port)
    name = f"aggregator@{socket.gethostname()}:{os.getpid()}"
    uploader = make_uploader(settings)
    async with (
        BatchStore.from_settings(settings, name="batchfleet-aggregator") as store,
        uploader,
    ):
        await Aggregator(settings, store, uploader, name=name).run(stop)
