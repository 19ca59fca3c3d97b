"""One failure policy for every role: what "Redis (or Kafka) is unavailable" means, how long to wait
before trying again, and which failures are a misconfiguration rather than an outage.

- :data:`REDIS_UNAVAILABLE` is the one definition of "Redis cannot serve us right now": unreachable,
  timing out, still loading its data, full (``maxmemory`` + ``noeviction``), read-only or
  CLUSTERDOWN during a failover, or refusing our credentials or permissions.  Every role waits these out.
- :func:`redis_problem` says which kind a failure is, so that refused credentials and certificates
  that do not verify are logged as errors (someone must fix the configuration), and an outage as a
  warning.  At start-up those two are fatal instead (:func:`batchfleet.runtime.wait_for_redis`).
- :func:`retry` runs an operation until it succeeds, waiting :class:`Backoff` (capped exponential,
  "equal jitter") between failures; a set ``stop`` event cuts the wait short with
  :class:`~batchfleet.errors.StopRequested`, so SIGTERM is honoured in the middle of an outage.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from batchfleet.errors import StopRequested

__all__ = [
    "KAFKA_BACKOFF",
    "KAFKA_UNAVAILABLE",
    "REDIS_BACKOFF",
    "REDIS_UNAVAILABLE",
    "Backoff",
    "describe",
    "exception_chain",
    "log_retry",
    "redis_problem",
    "retry",
    "sleep_unless_stopped",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# BusyLoadingError (Redis loading its AOF) and AuthenticationError are ConnectionErrors.  On a Redis
# Cluster a failover shows as CLUSTERDOWN/MASTERDOWN (ClusterDownError), a migrating slot as TRYAGAIN,
# and no reachable node at all as RedisClusterException.
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OutOfMemoryError,
    ReadOnlyError,
    NoPermissionError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
    OSError,
)
KAFKA_UNAVAILABLE: tuple[type[BaseException], ...] = (KafkaConnectionError, KafkaTimeoutError)

RedisProblem = Literal["credentials", "tls", "unavailable"]
Service = Literal["redis", "kafka"]


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with equal jitter: the n-th wait is between half and all of
    ``min(first_s * 2**(n-1), max_s)``, so processes that failed together do not retry together."""

    first_s: float = 0.1
    max_s: float = 5.0

    def delay_s(self, failures: int) -> float:
        capped = min(self.first_s * 2.0 ** max(failures - 1, 0), self.max_s)
        return capped * (0.5 + random.random() / 2)


REDIS_BACKOFF = Backoff(0.1, 5.0)
KAFKA_BACKOFF = Backoff(0.5, 10.0)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (``__cause__`` or ``__context__``), outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def redis_problem(exc: BaseException) -> RedisProblem:
    """What a Redis failure is: refused credentials/permissions, a TLS handshake that failed
    (certificate not trusted, TLS against a plain port), or plain unavailability."""
    chain = exception_chain(exc)
    if any(isinstance(e, AuthenticationError | NoPermissionError) for e in chain):
        return "credentials"
    if any(isinstance(e, ssl.SSLError) for e in chain) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "tls"
    return "unavailable"


_PROBLEM_TEXT = {
    "credentials": "refused our credentials or permissions (check the user and password in BATCHFLEET_REDIS_URL and its ACL)",
    "tls": "TLS handshake failed (check rediss:// and BATCHFLEET_REDIS_TLS_CA_FILE)",
    "unavailable": "unavailable",
}


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    name = type(exc).__name__
    text = " ".join(str(exc).split()).removeprefix(f"{name}: ")
    return f"{name}: {text}" if text else name


def log_retry(what: str, exc: BaseException, delay_s: float, service: Service = "redis") -> None:
    """The one line a retry logs: Redis credentials/TLS problems at ERROR, outages at WARNING."""
    if service == "kafka":
        log.warning("%s: kafka unavailable (%s); retrying in %.1fs", what, describe(exc), delay_s)
        return
    problem = redis_problem(exc)
    level = logging.WARNING if problem == "unavailable" else logging.ERROR
    log.log(level, "%s: redis %s (%s); retrying in %.1fs", what, _PROBLEM_TEXT[problem], describe(exc), delay_s)


async def sleep_unless_stopped(delay_s: float, stop: asyncio.Event | None) -> None:
    """Sleep ``delay_s``; raise StopRequested as soon as ``stop`` is set (also if it already is)."""
    if stop is None:
        await asyncio.sleep(delay_s)
        return
    if stop.is_set():
        raise StopRequested("stop requested")
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
    except TimeoutError:
        return
    raise StopRequested("stop requested")


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    service: Service = "redis",
    backoff: Backoff | None = None,
    stop: asyncio.Event | None = None,
    give_up_after_s: float | None = None,
    attempts: int | None = None,
) -> T:
    """Run ``op`` until it succeeds, waiting ``backoff`` (default: the service's) between failures
    that mean the service is unavailable (:data:`REDIS_UNAVAILABLE` or :data:`KAFKA_UNAVAILABLE`).

    Raises the last failure when ``attempts`` calls failed or waiting longer would pass
    ``give_up_after_s``; raises StopRequested when ``stop`` is set before or during a wait.
    Failures are logged once per attempt: Redis credentials/TLS problems at ERROR, outages at WARNING.
    """
    retry_on = KAFKA_UNAVAILABLE if service == "kafka" else REDIS_UNAVAILABLE
    backoff = backoff or (KAFKA_BACKOFF if service == "kafka" else REDIS_BACKOFF)
    give_up_at = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    failures = 0
    while True:
        try:
            return await op()
        except retry_on as exc:
            failures += 1
            delay_s = backoff.delay_s(failures)
            out_of_time = give_up_at is not None and time.monotonic() + delay_s > give_up_at
            if (attempts is not None and failures >= attempts) or out_of_time:
                raise
            log_retry(what, exc, delay_s, service)
            await sleep_unless_stopped(delay_s, stop)
