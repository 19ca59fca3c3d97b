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
