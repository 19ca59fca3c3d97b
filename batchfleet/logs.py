"""Logging set-up, done once in the entry point.

Human lines by default; JSON lines with ``BATCHFLEET_LOG_FORMAT=json``.  Batch events pass
``extra={"batch_id": ..., "topic": ...}`` so both formats carry them.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

__all__ = ["configure_logging"]

_EXTRA_FIELDS = ("batch_id", "topic", "station_id", "role")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


def configure_logging(fmt: str = "human", level: str = "INFO", role: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        prefix = f"{role} " if role else ""
        formatter = logging.Formatter(f"%(asctime)s.%(msecs)03d %(levelname)-7s {prefix}%(message)s", "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "arq.worker", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
