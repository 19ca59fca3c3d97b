"""A tiny loopback TCP proxy whose upstream can be switched: a stand-in for "the address that leads
to the current Redis primary" in failover tests.  ``switch(port)`` closes every open connection, so
clients reconnect and reach the new upstream, as they would after a failover behind HAProxy."""

from __future__ import annotations

import asyncio
import contextlib

from batchfleet_dev.localstack import free_port

__all__ = ["TcpProxy"]

_CHUNK = 65_536


class TcpProxy:
    """Listens on 127.0.0.1:``port`` and forwards every connection to 127.0.0.1:``upstream``."""

    def __init__(self, upstream: int, port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def switch(self, upstream: int) -> None:
        """Lead new connections to ``upstream`` and cut every open one."""
        self.upstream = upstream
        await self._cut()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _cut(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, up_w}
        pumps = [asyncio.create_task(self._pump(client_r, up_w)), asyncio.create_task(self._pump(up_r, client_w))]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for writer in (client_w, up_w):
            writer.close()
            self._writers.discard(writer)
        for task in pumps:
            task.cancel()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
