"""Where batches go, chosen by ``BATCHFLEET_UPLOADER``.

- ``file:///path/uploads.jsonl``  appends one JSON line per batch (single write, fsync)
- ``http://...`` / ``https://...`` POST with ``Idempotency-Key: <batch_id>`` and an optional auth header
- ``kafka://TOPIC``               produces to an output topic, key = batch id (acks=all)
- ``module:function``             a custom ``async def upload(payload: dict) -> None``

Every uploader receives the frozen payload bytes, so a retry or a takeover after a crash sends the
very same body.  Any exception means "failed, retry later".
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from batchfleet.errors import ConfigError, UploadError
from batchfleet.importing import load_callable
from batchfleet.kafka import client_options, wait_for_kafka
from batchfleet.runtime import start_kafka
from batchfleet.settings import Settings, url_problem

__all__ = ["CallableUploader", "FileUploader", "HttpUploader", "KafkaUploader", "Uploader", "make_uploader"]


class Uploader:
    """Base: an async context manager with one method, ``upload``."""

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect what needs connecting; waits for a target that is down at start-up until ``stop``."""
        return None

    async def close(self) -> None:
        return None

    async def upload(self, batch_id: str, body: bytes) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def describe(self) -> str:
        return type(self).__name__


class FileUploader(Uploader):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def upload(self, batch_id: str, body: bytes) -> None:
        async with self._lock:
            await asyncio.to_thread(self._append, body + b"\n")

    def describe(self) -> str:
        return f"file://{self.path}"


def _auth_header(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    name, sep, value = raw.partition(":")
    if sep and name.strip() and " " not in name.strip():
        return {name.strip(): value.strip()}
    return {"Authorization": raw.strip()}


class HttpUploader(Uploader):
    def __init__(self, url: str, *, timeout_s: float, auth_header: str | None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", **_auth_header(auth_header)}
        self._client: httpx.AsyncClient | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        timeout = httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s))
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def upload(self, batch_id: str, body: bytes) -> None:
        if self._client is None:
            raise UploadError("http uploader not started")
        headers = {**self._headers, "Idempotency-Key": batch_id}
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            detail = "" if isinstance(exc, httpx.LocalProtocolError) else f": {exc}"  # that one's text can hold a header
            raise UploadError(f"POST {self.describe()} failed: {type(exc).__name__}{detail}") from exc
        if response.status_code >= 300:
            raise UploadError(f"POST {self.describe()} answered HTTP {response.status_code}")

    def describe(self) -> str:
        parts = urlsplit(self.url)  # never show credentials embedded in the URL
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"


class KafkaUploader(Uploader):
    def __init__(self, topic: str, settings: Settings) -> None:
        self.topic = topic
        self.settings = settings
        self.bootstrap_servers = settings.kafka_bootstrap_servers
        self._options = client_options(settings)  # ConfigError: a bad combination or a missing file
        self._producer: AIOKafkaProducer | None = None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        what = f"uploader {self.describe()}: waiting for kafka at {self.bootstrap_servers}"
        await wait_for_kafka(self.settings, stop, what)  # ConfigError: credentials or TLS refused
        self._producer = await start_kafka(lambda: AIOKafkaProducer(**self._options, acks="all"), what=what, stop=stop)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def upload(self, batch_id: str, body: bytes) -> None:
        if self._producer is None:
            raise UploadError("kafka uploader not started")
        try:
            await self._producer.send_and_wait(self.topic, body, key=batch_id.encode())
        except Exception as exc:
            raise UploadError(f"produce to {self.topic} failed: {type(exc).__name__}: {exc}") from exc

    def describe(self) -> str:
        return f"kafka://{self.topic}"


class CallableUploader(Uploader):
    def __init__(self, ref: str, fn: Callable[..., Any]) -> None:
        self.ref = ref
        self.fn = fn

    async def upload(self, batch_id: str, body: bytes) -> None:
        result = self.fn(orjson.loads(body))
        if inspect.isawaitable(result):
            await result

    def describe(self) -> str:
        return self.ref


def make_uploader(settings: Settings) -> Uploader:
    """The uploader named by ``settings.uploader``; a ConfigError when it names nothing usable."""
    ref = settings.uploader.strip()
    if not ref:
        raise ConfigError("BATCHFLEET_UPLOADER is not set (file:///..., http(s)://..., kafka://TOPIC or module:function)")
    problem = url_problem(ref)
    if problem:  # never echo it: the URL may hold a password
        raise ConfigError(f"BATCHFLEET_UPLOADER: {problem}")
    scheme = urlsplit(ref).scheme
    if scheme == "file":
        return FileUploader(Path(unquote(urlsplit(ref).path)))
    if scheme in ("http", "https"):
        auth = settings.upload_auth_header.get_secret_value() if settings.upload_auth_header else None
        return HttpUploader(ref, timeout_s=settings.upload_timeout_s, auth_header=auth)
    if scheme == "kafka":
        topic = ref[len("kafka://") :].strip("/")
        if not topic:
            raise ConfigError("BATCHFLEET_UPLOADER names no topic (kafka://TOPIC)")
        return KafkaUploader(topic, settings)
    if ":" in ref and "//" not in ref:
        return CallableUploader(ref, load_callable(ref))
    raise ConfigError(f"BATCHFLEET_UPLOADER: unknown scheme {scheme!r} (file://, http(s)://, kafka://TOPIC, module:function)")
