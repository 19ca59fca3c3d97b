"""Entry point of one aggregator process."""

from __future__ import annotations

import asyncio
import os
import socket

from batchfleet.aggregator.service import Aggregator
from batchfleet.aggregator.uploaders import make_uploader
from batchfleet.metrics import serve_metrics
from batchfleet.runtime import bounded, freeze_startup_heap, wait_for_redis
from batchfleet.settings import Settings
from batchfleet.store import BatchStore

__all__ = ["serve"]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    uploader = make_uploader(settings)  # a bad BATCHFLEET_UPLOADER fails before anything starts
    serve_metrics(settings.metrics_port, settings.metrics_host)
    name = f"aggregator@{socket.gethostname()}:{os.getpid()}"
    async with BatchStore.from_settings(settings, name="batchfleet-aggregator") as store:
        await wait_for_redis(store, stop, settings.redis_location())
        await uploader.start(stop)
        freeze_startup_heap()
        try:
            await Aggregator(settings, store, uploader, name=name).run(stop)
        finally:
            # flushing a kafka:// producer during a Kafka outage would wait for the broker
            close_s = max(settings.worker_grace_s / 2, 0.5)
            await bounded(uploader.close(), close_s, f"closing the uploader ({uploader.describe()})")
