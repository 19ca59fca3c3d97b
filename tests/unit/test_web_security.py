"""The console's Guard: token check, signed sessions that expire, CSRF tokens bound to a session."""

from __future__ import annotations

from starlette.requests import Request

from batchfleet.settings import Settings
from batchfleet.web.security import SESSION_COOKIE, SESSION_TTL_S, Guard


def _request(cookie: str | None = None, **headers: str) -> Request:
    raw = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    if cookie is not None:
        raw.append((b"cookie", f"{SESSION_COOKIE}={cookie}".encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""})


def test_without_a_token_nothing_is_writable() -> None:
    guard = Guard(Settings(web_token=None))
    assert not guard.writable and not guard.check_token("") and not guard.check_token("anything")
    assert guard.session(_request("1.a.b")) is None and guard.csrf_token(None) == ""


def test_token_check() -> None:
    guard = Guard(Settings(web_token="s3cret-token-of-20-chars"))
    assert guard.writable and guard.check_token("s3cret-token-of-20-chars")
    assert (
        not guard.check_token("s3cret-token-of-20-char")
        and not guard.check_token("s3cret-token-of-20-chars ")
        and not guard.check_token(None)
    )


def test_sessions_are_signed_expire_and_end_when_the_token_changes() -> None:
    guard = Guard(Settings(web_token="s3cret-token-of-20-chars"))
    cookie = guard.new_session(now_s=1_000_000)
    nonce = guard.session(_request(cookie), now_s=1_000_010)
    assert nonce
    assert guard.session(_request(cookie), now_s=1_000_000 + SESSION_TTL_S + 1) is None  # expired
    issued, rest = cookie.split(".", 1)
    assert guard.session(_request(f"{int(issued) + 100}.{rest}"), now_s=1_000_010) is None  # tampered issue time
    assert guard.session(_request(cookie[:-1] + ("0" if cookie[-1] != "0" else "1")), now_s=1_000_010) is None
    assert guard.session(_request("garbage"), now_s=1_000_010) is None and guard.session(_request(), now_s=1) is None
    assert Guard(Settings(web_token="rotated-token-of-20-chars")).session(_request(cookie), now_s=1_000_010) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    guard = Guard(Settings(web_token="s3cret-token-of-20-chars"))
    a = guard.session(_request(guard.new_session(now_s=5)), now_s=6)
    b = guard.session(_request(guard.new_session(now_s=5)), now_s=6)
    assert a and b and a != b
    assert guard.check_csrf(a, guard.csrf_token(a))
    assert not guard.check_csrf(a, guard.csrf_token(b)) and not guard.check_csrf(a, "") and not guard.check_csrf(None, "")


def test_same_origin_and_hosts() -> None:
    assert Guard.same_origin(_request(host="127.0.0.1:8080", origin="http://127.0.0.1:8080"), required=True)
    assert Guard.same_origin(_request(host="127.0.0.1:8080", referer="http://127.0.0.1:8080/dead"), required=True)
    assert not Guard.same_origin(_request(host="127.0.0.1:8080", origin="http://evil.example"), required=True)
    assert not Guard.same_origin(_request(host="127.0.0.1:8080", origin="null"), required=False)
    assert not Guard.same_origin(_request(host="127.0.0.1:8080"), required=True)
    assert Guard.same_origin(_request(host="127.0.0.1:8080"), required=False)  # API clients send no Origin
    assert Guard(Settings(web_host="0.0.0.0")).allowed_hosts == sorted({"127.0.0.1", "localhost", "::1", "[::1]"})
    hosts = Guard(Settings(web_host="10.1.2.3", web_allowed_hosts="console.example, *.ops.example")).allowed_hosts
    assert {"10.1.2.3", "console.example", "*.ops.example", "localhost"} <= set(hosts)


def test_sign_out_revokes_a_session_and_the_key_is_random() -> None:
    settings = Settings(web_token="s3cret-token-of-20-chars")
    guard = Guard(settings)
    cookie = guard.new_session(now_s=1_000)
    nonce = guard.session(_request(cookie), now_s=1_001)
    assert nonce
    guard.revoke(nonce)
    assert guard.session(_request(cookie), now_s=1_002) is None  # the same, validly signed cookie: refused
    assert Guard(settings).session(_request(guard.new_session(now_s=1_000)), now_s=1_001) is None  # a restart


def test_failure_throttle_per_client_total_and_window() -> None:
    from batchfleet.web.security import FailureThrottle

    throttle = FailureThrottle(per_client=3, total=5, window_s=60, max_clients=100)
    for t in (0.0, 1.0, 2.0):
        assert throttle.retry_after_s("a", now=t) is None
        throttle.failed("a", now=t)
    assert throttle.retry_after_s("a", now=3.0) == 57  # the oldest of the last 3 leaves the window at 60 s
    assert throttle.retry_after_s("b", now=3.0) is None
    assert throttle.retry_after_s("a", now=60.5) is None  # window passed
    throttle.failed("b", now=61.0)
    throttle.failed("c", now=61.0)
    assert throttle.retry_after_s("d", now=61.5) is None  # 1 (t=2) + 2 within the window: below the total of 5
    throttle.failed("e", now=62.0)
    throttle.failed("f", now=62.0)
    throttle.failed("g", now=62.0)
    wait = throttle.retry_after_s("d", now=62.5)
    assert wait is not None and 1 <= wait <= 60  # everyone waits once the total is reached
    forgiving = FailureThrottle(per_client=2, total=100, window_s=60)
    forgiving.failed("a", now=0.0)
    forgiving.failed("a", now=0.0)
    forgiving.forgive("a")  # the second attempt had the right token
    assert forgiving.retry_after_s("a", now=1.0) is None
    forgiving.forgive("nobody")  # nothing to take back: no error
    many = FailureThrottle(per_client=3, total=10**6, window_s=60, max_clients=10)
    for i in range(1000):
        many.failed(f"10.0.{i // 250}.{i % 250}", now=float(i) / 1000)
    assert len(many._clients) == 10  # memory stays bounded


def test_stream_slots() -> None:
    from batchfleet.web.security import StreamSlots

    slots = StreamSlots(per_client=2, total=3)
    assert slots.take("a") is None and slots.take("a") is None and slots.take("a") == 429
    assert slots.take("b") is None and slots.take("c") == 503 and slots.open == 3
    slots.give_back("a")
    assert slots.take("c") is None and slots.open == 3
