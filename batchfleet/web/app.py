"""The console's ASGI app: FastAPI (OpenAPI for ``/api``), Jinja2 pages, static assets, security middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

import batchfleet
from batchfleet import ops
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.web import api, pages
from batchfleet.web.security import Gate, Guard, SecurityHeaders

__all__ = ["create_app"]

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
    app.include_router(api.router)
    app.include_router(pages.router)
    return app
