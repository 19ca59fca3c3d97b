"""``batchfleet web``: the operator console (FastAPI + Jinja2 templates + plain JavaScript).

Pages: overview (live over server-sent events), batches, one batch, dead letters, quarantine; the
JSON API under ``/api``.  Security model: ``batchfleet.web.security``.
"""

from __future__ import annotations

from batchfleet.settings import Settings
from batchfleet.web.app import create_app

__all__ = ["create_app", "serve"]


def serve(settings: Settings) -> None:
    """Run the console on ``web_host:web_port`` until SIGTERM/SIGINT."""
    import logging

    import uvicorn

    from batchfleet.metrics import serve_metrics

    log = logging.getLogger(__name__)
    mode = "actions enabled (token set)" if settings.web_token is not None else "read-only (BATCHFLEET_WEB_TOKEN not set)"
    log.info("console on http://%s:%d/ — %s", settings.web_host, settings.web_port, mode)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.web_host,
        port=settings.web_port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run()
