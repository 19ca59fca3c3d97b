"""The one failure policy: backoff bounds, stop-aware waits, giving up, and telling a misconfiguration
from an outage.  (Against real servers: tests/integration/test_edges.py.)"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

import pytest
from redis.exceptions import AuthenticationError, BusyLoadingError, NoPermissionError, OutOfMemoryError
from redis.exceptions import ConnectionError as RedisConnectionError

from batchfleet.errors import StopRequested
from batchfleet.heartbeat import every
from batchfleet.retry import REDIS_UNAVAILABLE, Backoff, redis_problem, retry, sleep_unless_stopped


def test_backoff_is_capped_exponential_with_equal_jitter() -> None:
    b = Backoff(0.1, 5.0)
    for failures, full in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 5.0), (50, 5.0)]:
        delays = [b.delay_s(failures) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays), (failures, min(delays), max(delays))
        assert max(delays) - min(delays) > full / 10  # jittered, not fixed


def test_redis_unavailable_covers_outages_and_refusals() -> None:
    for exc in (RedisConnectionError("x"), BusyLoadingError("x"), OutOfMemoryError("x"), OSError(111, "refused")):
        assert isinstance(exc, REDIS_UNAVAILABLE)
        assert redis_problem(exc) == "unavailable"
    assert redis_problem(AuthenticationError("invalid username-password pair")) == "credentials"
    assert redis_problem(NoPermissionError("NOPERM this user has no permissions")) == "credentials"
    wrapped = RedisConnectionError("Error 1 connecting to 127.0.0.1:1. [SSL: CERTIFICATE_VERIFY_FAILED] ...")
    wrapped.__context__ = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert redis_problem(wrapped) == "tls"


async def test_retry_returns_after_transient_failures_and_logs_each(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RedisConnectionError("Error 111 connecting")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="batchfleet.retry"):
        assert await retry(flaky, what="test", backoff=Backoff(0.001, 0.002)) == "ok"
    assert calls == 3
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert "redis unavailable (ConnectionError: Error 111 connecting)" in caplog.records[0].getMessage()


async def test_refused_credentials_are_logged_as_errors(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise AuthenticationError("invalid username-password pair")

    with caplog.at_level(logging.WARNING, logger="batchfleet.retry"):
        await retry(refused, what="test", backoff=Backoff(0.001, 0.002))
    [record] = caplog.records
    assert record.levelname == "ERROR" and "refused our credentials" in record.getMessage()


async def test_retry_gives_up_after_its_attempts_and_passes_other_errors_through() -> None:
    async def down() -> None:
        raise RedisConnectionError("down")

    with pytest.raises(RedisConnectionError):
        await retry(down, what="test", backoff=Backoff(0.001, 0.001), attempts=3)

    async def bug() -> None:
        raise ValueError("not an outage")

    with pytest.raises(ValueError):
        await retry(bug, what="test")


async def test_a_stop_cuts_the_wait_short() -> None:
    stop = asyncio.Event()

    async def down() -> None:
        raise RedisConnectionError("down")

    task = asyncio.create_task(retry(down, what="test", backoff=Backoff(30, 30), stop=stop))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    stop.set()
    with pytest.raises(StopRequested):
        await task
    assert time.monotonic() - started < 1
    with pytest.raises(StopRequested):
        await sleep_unless_stopped(30, stop)  # already set: no wait at all


async def test_every_logs_an_unexpected_failure_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("away")  # expected: debug only
        if calls == 2:
            raise KeyError("a bug")
        stop.set()

    with caplog.at_level(logging.DEBUG, logger="batchfleet.heartbeat"):
        await every(0.001, stop, step, "heartbeat")
    assert calls == 3  # kept going after both
    levels = {r.levelname: r for r in caplog.records}
    assert (
        "ERROR" in levels
        and levels["ERROR"].exc_info is not None
        and "heartbeat failed unexpectedly" in levels["ERROR"].getMessage()
    )
    assert "DEBUG" in levels and "away" in levels["DEBUG"].getMessage()


def test_aiokafka_reconnect_noise_is_throttled_with_a_count() -> None:
    from batchfleet.logs import Throttle

    throttle = Throttle(every_s=10)

    def record(name: str, at: float, msg: str = 'Unable connect to "%s": %s') -> logging.LogRecord:
        r = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("127.0.0.1:1", "refused"), None)
        r.created = at
        return r

    assert throttle.filter(record("aiokafka", 100.0))
    assert not any(throttle.filter(record("aiokafka", 100.0 + i / 10)) for i in range(1, 40))  # ten a second
    assert throttle.filter(record("aiokafka.consumer.fetcher", 100.5, "Failed fetch messages from %s: %s"))  # another kind
    later = record("aiokafka", 111.0)
    assert throttle.filter(later) and "[and 39 more like it in 11s]" in later.getMessage()
    assert throttle.filter(record("batchfleet.retry", 111.1)) and throttle.filter(record("batchfleet.retry", 111.2))  # ours pass
