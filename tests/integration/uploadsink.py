"""A custom uploader (``module:function``) for the tests, and a real HTTP sink."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from batchfleet_dev.localstack import free_port

received: list[dict[str, Any]] = []


async def collect(payload: dict[str, Any]) -> None:
    received.append(payload)


class HttpSink:
    """A threaded HTTP server that records POSTs; ``fail_first`` answers 503 that many times."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False, hang_first_s: float = 0.0, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.host = host
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.statuses: list[int] = []  # what the sink answered to each request
        self.posts: list[tuple[str, float, dict[str, Any]]] = []  # (client address, time.time(), body) per POST
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.hang_first_s = hang_first_s
        self.delay_s = 0.0
        self.release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                payload = orjson.loads(body)
                sink.posts.append((self.client_address[0], time.time(), payload))
                sink.requests.append((headers, payload))
                if sink.delay_s:
                    time.sleep(sink.delay_s)
                if sink.hang_first_s and len(sink.requests) == 1:
                    sink.release.wait(sink.hang_first_s)  # an upload that never answers in time
                failing = sink.always_fail or len(sink.requests) <= sink.fail_first
                sink.statuses.append(503 if failing else 200)
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((host, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/batches"

    def __enter__(self) -> HttpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
