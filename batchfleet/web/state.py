"""What the console's app keeps for its requests: the store and the guard, read from ``app.state``."""

from __future__ import annotations

from fastapi import Request

from batchfleet.keys import parse_batch_id
from batchfleet.store import BatchStore
from batchfleet.web.security import Guard

__all__ = ["guard_of", "is_batch_id", "store_of"]


def is_batch_id(value: str) -> bool:
    """``TOPIC:PARTITION:OFFSET`` (a batch or quarantined message id); anything else names nothing."""
    try:
        parse_batch_id(value)
    except ValueError:
        return False
    return True


def store_of(request: Request) -> BatchStore:
    store: BatchStore = request.app.state.store
    return store


def guard_of(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard
