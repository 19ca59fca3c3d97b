"""The console's ASGI app: FastAPI (OpenAPI for ``/api``), Jinja2 pages, static assets, security middleware."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

import batchfleet
from batchfleet import ops
from batchfleet.retry import REDIS_UNAVAILABLE, describe
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.web import api, pages
from batchfleet.web.security import Gate, Guard, SecurityHeaders

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_DESCRIPTION = """The batchfleet web console's JSON API: the same data as the CLI's `--json`.

Reads need no credentials.  Actions (every `POST`) need `Authorization: Bearer BATCHFLEET_WEB_TOKEN`
and are refused while the console runs without a token (read-only).  The schema is served at
`/api/openapi.json`; a readable reference at `/api`."""


def create_app(settings: Settings, *, store: BatchStore | None = None) -> FastAPI:
    """The console for these settings.  With ``store`` the app uses (and does not close) that store;
    otherwise it opens its own for its lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if store is not None:
            yield
            return
        async with ops.open_store(settings, "batchfleet-web") as own:
            app.state.store = own
            yield

    app = FastAPI(
        title="batchfleet console API",
        version=batchfleet.__version__,
        description=_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    guard = Guard(settings)
    app.state.settings = settings
    app.state.guard = guard
    if store is not None:
        app.state.store = store
    app.add_middleware(Gate, guard=guard)  # innermost of the three: after the Host check, with the headers
    app.add_middleware(SecurityHeaders)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=guard.allowed_hosts)
    app.mount("/static", StaticFiles(directory=Path(__file__).with_name("static")), name="static")

    async def redis_unavailable(request: Request, exc: Exception) -> Response:
        """Redis out of reach while serving: 503 and one log line, not a 500 and a traceback."""
        text = f"redis at {settings.redis_location()} is unavailable: {describe(exc)}"
        log.warning("%s %s: %s", request.method, request.url.path, text)
        if request.url.path.startswith(f"{pages.base_of(request)}/api/"):
            return JSONResponse({"detail": text}, status_code=503, headers={"Retry-After": "5"})
        return pages.render(request, "message.html", 503, title="Redis unavailable", text=text, links=[])

    for unavailable in REDIS_UNAVAILABLE:
        if issubclass(unavailable, Exception):
            app.add_exception_handler(unavailable, redis_unavailable)
    app.include_router(api.router)
    app.include_router(pages.router)
    return app
