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


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL   role message``; the clock text is formatted once per second (workers log
    a line per station, so the formatter's cost shows in their throughput)."""

    def __init__(self, role: str = "") -> None:
        super().__init__()
        self._prefix = f"{role} " if role else ""
        self._second = -1
        self._clock = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._clock = second, time.strftime("%H:%M:%S", time.localtime(second))
        millis = int((record.created - second) * 1000)
        line = f"{self._clock}.{millis:03d} {record.levelname:<7} {self._prefix}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(fmt: str = "human", level: str = "INFO", role: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter(role))
    # The records never show the caller's file/line, thread or process: skip collecting them.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the Logging HOWTO's switch for "no caller information": no findCaller per record
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "arq.worker", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
