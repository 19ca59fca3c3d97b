"""Run a service until SIGTERM/SIGINT: the first signal sets the stop event (graceful drain), the
second exits at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

__all__ = ["run_until_signal"]

log = logging.getLogger(__name__)


async def _main(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", sig.name)
            os._exit(128 + sig.value)
        log.info("%s received: draining (send it again to exit at once)", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await serve(stop)


def run_until_signal(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    asyncio.run(_main(serve))
