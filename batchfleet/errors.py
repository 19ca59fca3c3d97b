"""Errors raised by batchfleet.

    BatchfleetError
    ├── ConfigError          bad settings or config file (fail fast at start-up; the CLI exits 2)
    │   └── ProcessorLoadError BATCHFLEET_PROCESSOR / BATCHFLEET_UPLOADER cannot be imported or called
    │   └── LayoutError      Redis holds this prefix with another shard layout
    ├── StoreError           Redis said something we did not expect
    │   └── StaleOffsetError another dispatcher already ingested these offsets
    │   └── FencedOffsetError Redis holds another next offset than the dispatcher expected
    ├── UploadError          the upload target refused or could not be reached
    └── StopRequested        a wait (for Redis, Kafka) was cut short by SIGTERM/SIGINT: exit cleanly

Third-party errors are translated at the boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "BatchfleetError",
    "ConfigError",
    "FencedOffsetError",
    "LayoutError",
    "ProcessorLoadError",
    "StaleOffsetError",
    "StopRequested",
    "StoreError",
    "UploadError",
]


class BatchfleetError(Exception):
    """Root of every batchfleet error."""


class ConfigError(BatchfleetError):
    """Settings or the per-topic config file are invalid."""


class LayoutError(ConfigError):
    """The shard count (or key scheme) stored in Redis differs from this process's settings."""


class StoreError(BatchfleetError):
    """A Redis operation returned something outside its contract."""


class StaleOffsetError(StoreError):
    """The offsets being ingested were already ingested (by us before a crash, or another dispatcher)."""

    def __init__(self, partition_field: str, stored_offset: int) -> None:
        super().__init__(f"{partition_field} already ingested up to offset {stored_offset}")
        self.partition_field = partition_field
        self.stored_offset = stored_offset


class FencedOffsetError(StoreError):
    """Redis holds another next offset for a partition than the dispatcher believed it wrote: writes
    were lost (a failover, an AOF restart missing its tail) or the dispatcher is stale (a rebalance).
    ``stored_offset`` is None when Redis holds no offset for the partition at all."""

    def __init__(self, partition_field: str, expected: int | None, stored_offset: int | None) -> None:
        def show(offset: int | None) -> str:
            return "nothing" if offset is None else f"next offset {offset}"

        super().__init__(f"{partition_field}: expected Redis to hold {show(expected)}, it holds {show(stored_offset)}")
        self.partition_field = partition_field
        self.expected = expected
        self.stored_offset = stored_offset


class ProcessorLoadError(ConfigError):
    """A ``module:function`` reference cannot be imported, is not callable, or has the wrong signature."""


class UploadError(BatchfleetError):
    """An upload attempt failed; the aggregator retries it with backoff."""


class StopRequested(BatchfleetError):
    """The process was asked to stop while it waited for a service; unwinds to a clean exit."""
