"""Logging set-up, done once in the entry point.

Human lines by default; JSON lines with ``BATCHFLEET_LOG_FORMAT=json``.  Batch events pass
``extra={"batch_id": ..., "topic": ...}`` so both formats carry them.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

__all__ = ["Throttle", "configure_logging"]

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


class Throttle(logging.Filter):
    """Lets one record of a kind (logger + message template) through per ``every_s`` for the
    ``loggers`` named; the next one that passes says how many were held back.  aiokafka logs every
    failed reconnect, about ten lines a second while Kafka is away; batchfleet logs its own wait."""

    def __init__(self, loggers: tuple[str, ...] = ("aiokafka", "kafka"), every_s: float = 10.0) -> None:
        super().__init__()
        self.loggers = loggers
        self.every_s = every_s
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.loggers):
            return True
        key = (record.name, record.msg)
        last = self._seen.get(key)
        if last is not None and record.created - last[0] < self.every_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        self._seen[key] = (record.created, 0)
        if last is not None and last[1]:
            record.msg = f"{record.msg} [and {last[1]} more like it in {record.created - last[0]:.0f}s]"
        return True


def configure_logging(fmt: str = "human", level: str = "INFO", role: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter(role))
    handler.addFilter(Throttle())
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
