"""What the console's app keeps for its requests: the store and the guard, read from ``app.state``."""

from __future__ import annotations

from fastapi import Request

from batchfleet.store import BatchStore
from batchfleet.web.security import Guard

__all__ = ["guard_of", "store_of"]


def store_of(request: Request) -> BatchStore:
    store: BatchStore = request.app.state.store
    return store


def guard_of(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard
