"""Stateless arq workers that run station jobs.

Start the arq way with ``arq batchfleet.workers.WorkerSettings`` (settings from ``BATCHFLEET_*`` variables),
or with ``batchfleet worker``.  ``WorkerSettings`` is built on first access, so importing this
package never reads the environment by itself.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WorkerSettings", "worker_settings"]


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from batchfleet.workers.settings import build_worker_settings_class

        return build_worker_settings_class()
    if name == "worker_settings":
        from batchfleet.workers.settings import worker_settings

        return worker_settings
    raise AttributeError(name)
