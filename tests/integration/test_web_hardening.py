"""The console's hardening, against real Redis and (where bytes on the wire matter) a real uvicorn:
body limits before reading, authentication before the body, throttled wrong tokens, server-side
sessions, malformed ids, capped live streams, Secure cookies behind a TLS proxy."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

import httpx
import pytest

from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.web import create_app
from batchfleet.web.security import FAILURES_PER_CLIENT, LOGIN_MAX_BODY_BYTES, MAX_BODY_BYTES, STREAMS_PER_CLIENT, Guard
from batchfleet_dev.localstack import RedisServer
from tests.integration.fleet import make_settings
from tests.integration.webdata import ORIGIN, client, make_dead, served, spec

TOKEN = "hardening-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAME = {"Origin": ORIGIN}


def _settings(redis_server: RedisServer, **overrides: object) -> Settings:
    overrides.setdefault("web_token", TOKEN)
    return make_settings(redis_server.url, "127.0.0.1:9", ["t"], "tests.integration.uploadsink:collect", **overrides)


async def _raw(url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str]]:
    """Send a request's head (and ``body``, possibly far less than it declares) on a raw socket; the
    status and headers of the answer, which must come without the rest of the body."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    finally:
        writer.close()
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return int(lines[0].split()[1]), headers


def _post_head(path: str, length: int, *, extra: str = "", kind: str = "application/json") -> str:
    return f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: {kind}\nContent-Length: {length}\n{extra}"


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(redis_server: RedisServer, store: BatchStore) -> None:
    """64 MiB declared, nothing sent: the 413 comes at once (the server never waited for the body)."""
    async with served(_settings(redis_server), store) as url:
        for path, auth in (
            ("/login", ""),
            ("/api/dead/replay-all", f"Authorization: Bearer {TOKEN}\n"),
            ("/api/quarantine/t:0:0/redispatch", ""),
            ("/dead/replay-all", ""),
        ):
            status, _ = await _raw(url, _post_head(path, 64 * 1024 * 1024, extra=auth))
            assert status == 413, path
        status, _ = await _raw(url, _post_head("/login", LOGIN_MAX_BODY_BYTES + 1, kind="application/x-www-form-urlencoded"))
        assert status == 413


async def test_a_streamed_body_is_cut_off_at_the_limit(redis_server: RedisServer, store: BatchStore) -> None:
    """A chunked body declares no length: a little over the limit is sent, the body is never ended,
    and the 413 comes anyway (the read stopped at the limit, not at the body's end)."""

    def chunked(size: int) -> bytes:
        block = b"x" * 65536
        return b"".join(b"%x\r\n%s\r\n" % (len(block), block) for _ in range(size // len(block) + 2))

    async with served(_settings(redis_server), store) as url:
        for path, limit, extra in (
            ("/login", LOGIN_MAX_BODY_BYTES, f"Origin: {ORIGIN}\n"),
            ("/api/quarantine/t:0:0/redispatch", MAX_BODY_BYTES, f"Authorization: Bearer {TOKEN}\n"),
        ):
            head = f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\nTransfer-Encoding: chunked\n{extra}"
            status, _ = await _raw(url, head, chunked(limit))
            assert status == 413, path


async def test_api_actions_are_authenticated_before_the_body_is_read(redis_server: RedisServer, store: BatchStore) -> None:
    """No token or a wrong one: 401 with 1 MiB declared and not one byte of it sent."""
    async with served(_settings(redis_server), store) as url:
        for auth in ("", "Authorization: Bearer wrong-token-wrong-token-wrong\n", "Authorization: Basic eDp5\n"):
            status, headers = await _raw(url, _post_head("/api/quarantine/t:0:0/redispatch", 1024 * 1024, extra=auth))
            assert status == 401 and headers["www-authenticate"] == "Bearer", auth
        read_only = _settings(redis_server, web_token=None)
    async with served(read_only, store) as url:
        status, _ = await _raw(url, _post_head("/api/dead/replay-all", 1024 * 1024, extra=f"Authorization: Bearer {TOKEN}\n"))
        assert status == 403


async def test_form_actions_check_the_session_before_the_form(redis_server: RedisServer, store: BatchStore) -> None:
    async with served(_settings(redis_server), store) as url:
        head = _post_head("/dead/replay-all", 1024 * 1024, extra=f"Origin: {ORIGIN}\n", kind="application/x-www-form-urlencoded")
        status, _ = await _raw(url, head)
        assert status == 403


async def test_wrong_api_tokens_are_throttled_per_client_and_in_total(redis_server: RedisServer, store: BatchStore) -> None:
    settings = _settings(redis_server)
    app = create_app(settings, store=store)
    wrong = {"Authorization": "Bearer wrong-token-wrong-token-wrong"}
    async with (
        client(settings, store, app=app, address="10.0.0.1") as one,
        client(settings, store, app=app, address="10.0.0.2") as two,
    ):
        for _ in range(FAILURES_PER_CLIENT):
            assert (await one.post("/api/dead/replay-all", headers=wrong)).status_code == 401
        throttled = await one.post("/api/dead/replay-all", headers=AUTH)  # even the right token: wait first
        assert throttled.status_code == 429 and 1 <= int(throttled.headers["retry-after"]) <= 60
        assert (await one.post("/login", data={"token": TOKEN}, headers=SAME)).status_code == 429  # the sign-in too
        assert (await two.post("/api/dead/replay-all", headers=AUTH)).status_code == 200  # another client is not held up
        assert (await one.get("/api/status")).status_code == 200  # reads need no token and are not throttled
    guard: Guard = app.state.guard
    total = guard.failures.total
    async with client(settings, store, app=app, address="10.0.0.3") as three:
        for i in range(total):  # from many addresses, each below its own limit
            async with client(settings, store, app=app, address=f"10.1.{i // 250}.{i % 250}") as other:
                await other.post("/api/dead/replay-all", headers=wrong)
        refused = await three.post("/api/dead/replay-all", headers=AUTH)
        assert refused.status_code == 429 and "retry-after" in refused.headers


async def test_wrong_sign_ins_are_throttled(redis_server: RedisServer, store: BatchStore) -> None:
    settings = _settings(redis_server)
    app = create_app(settings, store=store)
    async with client(settings, store, app=app, address="10.0.0.9") as web:
        for _ in range(3):  # signing in with the right token is not held against the client
            assert (await web.post("/login", data={"token": TOKEN}, headers=SAME)).status_code == 303
        replies = await asyncio.gather(
            *(web.post("/login", data={"token": f"guess-{i}"}, headers=SAME) for i in range(2 * FAILURES_PER_CLIENT))
        )  # sent at once: counted as they arrive, so no more than the limit are checked
        assert sorted(r.status_code for r in replies) == [403] * FAILURES_PER_CLIENT + [429] * FAILURES_PER_CLIENT
        throttled = await web.post("/login", data={"token": TOKEN}, headers=SAME)
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        assert throttled.json()["detail"].startswith("too many wrong tokens")  # the Gate's answer: the form was not read


def _session_cookie(reply: httpx.Response) -> str:
    found = re.search(r"bf_session=([^;]+)", reply.headers["set-cookie"])
    assert found
    return found.group(1)


async def test_sign_out_revokes_the_session_server_side(redis_server: RedisServer, store: BatchStore) -> None:
    settings = _settings(redis_server)
    app = create_app(settings, store=store)
    await store.create_batch(spec("HARD:0:0", ["S001"], timeout_s=0.001))
    await make_dead(store, "HARD:0:0")
    async with client(settings, store, app=app) as web:
        signed_in = await web.post("/login", data={"token": TOKEN, "next": "/dead"}, headers=SAME)
        assert signed_in.status_code == 303
        cookie = _session_cookie(signed_in)
        csrf = re.search(r'name="csrf" value="([^"]+)"', (await web.get("/dead")).text)
        assert csrf
        out = await web.post("/logout", data={"csrf": csrf.group(1)}, headers=SAME)
        assert out.status_code == 303
    async with client(settings, store, app=app) as stolen:  # the same cookie, kept by someone else
        stolen.cookies.set("bf_session", cookie)
        reply = await stolen.post("/dead/HARD:0:0/replay", data={"csrf": csrf.group(1)}, headers=SAME)
        assert reply.status_code == 403 and "sign in first" in reply.text
        assert "Sign out" not in (await stolen.get("/dead")).text
    assert (await store.batch_meta("HARD:0:0"))["state"] == "dead"


async def test_sessions_end_with_the_process_and_the_key_is_not_the_token(redis_server: RedisServer, store: BatchStore) -> None:
    settings = _settings(redis_server)
    first, second = Guard(settings), Guard(settings)
    assert first._key != second._key  # random per start, so not derived from the token
    async with client(settings, store) as web:
        cookie = _session_cookie(await web.post("/login", data={"token": TOKEN}, headers=SAME))
    async with client(settings, store) as restarted:  # a restart (as a token change needs) ends it
        restarted.cookies.set("bf_session", cookie)
        assert (await restarted.post("/dead/replay-all", data={"csrf": "x"}, headers=SAME)).status_code == 403


@pytest.mark.parametrize("secure_setting, secure", [(False, False), (True, True)])
async def test_secure_cookies_behind_a_tls_proxy(
    redis_server: RedisServer, store: BatchStore, secure_setting: bool, secure: bool
) -> None:
    async with client(_settings(redis_server, web_secure_cookies=secure_setting), store) as web:
        reply = await web.post("/login", data={"token": TOKEN}, headers=SAME)
        assert reply.status_code == 303 and ("; secure" in reply.headers["set-cookie"].lower()) is secure


MALFORMED = ["nocolon", "a:b:c", "t:0:x", "t:1", "t:0:1:", ":", "t:0:" + "9" * 5000, "t:%ZZ:1", "t:0:1e3"]


async def test_malformed_ids_are_404_not_500(redis_server: RedisServer, store: BatchStore) -> None:
    async with client(_settings(redis_server), store) as web:
        for bad in MALFORMED:
            for path in (f"/batches/{bad}", f"/quarantine/{bad}", f"/api/batches/{bad}", f"/api/batches/{bad}/payload"):
                reply = await web.get(path)
                assert reply.status_code == 404 and "Traceback" not in reply.text, (path, reply.status_code)
            assert (await web.get(f"/api/quarantine/{bad}")).status_code == 404
            for path in (f"/api/dead/{bad}/replay", f"/api/quarantine/{bad}/redispatch"):
                reply = await web.post(path, headers=AUTH, json={})
                assert reply.status_code == 404, (path, reply.status_code, reply.text)
            searched = await web.get("/batches", params={"q": bad})
            assert searched.status_code == 200, bad
            for params in ({"q": bad, "topic": bad}, {"topic": bad}):
                assert (await web.get("/api/batches", params=params)).status_code in (200, 422), params


async def _open_stream(http: httpx.AsyncClient) -> httpx.Response:
    request = http.build_request("GET", "/api/overview/stream", params={"interval_s": 30})
    return await http.send(request, stream=True)


async def test_live_streams_are_capped_per_client_and_in_total(redis_server: RedisServer, store: BatchStore) -> None:
    settings = _settings(redis_server)
    app = create_app(settings, store=store)
    guard: Guard = app.state.guard
    async with served(settings, store, app=app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        streams = [await _open_stream(http) for _ in range(STREAMS_PER_CLIENT)]
        try:
            assert all(s.status_code == 200 for s in streams)
            refused = await http.get("/api/overview/stream")
            assert refused.status_code == 429 and "retry-after" in refused.headers
            await streams.pop().aclose()  # a closed stream gives its slot back

            async def reopened() -> httpx.Response | None:
                for _ in range(100):
                    reply = await _open_stream(http)
                    if reply.status_code == 200:
                        return reply
                    await reply.aclose()
                    await asyncio.sleep(0.1)
                return None

            again = await reopened()
            assert again is not None, "the closed stream's slot never came back"
            streams.append(again)
            guard.streams.per_client, guard.streams.total = 100, STREAMS_PER_CLIENT
            full = await http.get("/api/overview/stream")
            assert full.status_code == 503 and "retry-after" in full.headers
        finally:
            for s in streams:
                await s.aclose()
