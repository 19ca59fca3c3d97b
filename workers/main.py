"""Entry point of one worker process (arq's own loop and signal handling)."""

from __future__ import annotations

from arq.worker import Worker

from batchfleet.metrics import serve_metrics
from batchfleet.settings import Settings
from workers.settings import worker_settings

__all__ = ["serve"]


def serve(settings: Settings, *, burst: bool = False) -> None:
    serve_metrics(settings.metrics_port)
    Worker(**worker_settings(settings), burst=burst).run()
