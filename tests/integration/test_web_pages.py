"""The console's HTML pages and its security model, against real Redis: every page renders, user data
is escaped, actions need the token (sign-in session + CSRF token + same origin), hosts are checked."""

from __future__ import annotations

import re

import httpx
import pytest

from batchfleet.models import QuarantineEntry
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import RedisServer
from tests.integration.fleet import make_settings
from tests.integration.webdata import ORIGIN, client, make_dead, record, spec

TOKEN = "pages-test-token-0123456789"
XSS = "<script>window.__xss=1</script>"


def _settings(redis_server: RedisServer, token: str | None = TOKEN) -> Settings:
    return make_settings(redis_server.url, "127.0.0.1:9", ["t"], "tests.integration.uploadsink:collect", web_token=token)


async def _data(store: BatchStore) -> dict[str, str]:
    """An open batch with an XSS-laden station and error, a dead batch, a quarantined message."""
    open_id = await _open(store)
    await store.create_batch(spec("PAGES:0:1", ["S001"], timeout_s=0.001))
    await make_dead(store, "PAGES:0:1", error=f"HTTP 503: {XSS}")
    kept = b'{"stationData": [' + XSS.encode()
    await store.quarantine(
        QuarantineEntry("PAGES", 0, 2, f"invalid JSON {XSS}", kept, len(kept) + 100, False),
        retention_s=600,
        max_entries=100,
    )
    return {"open": open_id, "dead": "PAGES:0:1", "quarantined": "PAGES:0:2"}


async def _open(store: BatchStore) -> str:
    await store.create_batch(spec("PAGES:0:0", ["S001", f"S-{XSS}", "S003"]))
    await record(store, "PAGES:0:0", "S001", "ok")
    await record(store, "PAGES:0:0", f"S-{XSS}", "failed", f"ValueError: {XSS}")
    return "PAGES:0:0"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def _sign_in(api: httpx.AsyncClient) -> str:
    """Sign in with the token; the CSRF token of the session."""
    reply = await api.post("/login", data={"token": TOKEN, "next": "/dead"}, headers={"Origin": ORIGIN})
    assert reply.status_code == 303 and reply.headers["location"] == "/dead"
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    return _csrf((await api.get("/dead")).text)


async def test_every_page_renders_user_data_as_text(redis_server: RedisServer, store: BatchStore) -> None:
    ids = await _data(store)
    async with client(_settings(redis_server), store) as api:
        pages = {
            "/": "Open batches",
            "/batches": ids["open"],
            "/batches?state=dead": ids["dead"],
            f"/batches/{ids['open']}": "Stations",
            f"/batches/{ids['dead']}": "Replay this batch",
            "/dead": "Replay all 1",
            "/quarantine": ids["quarantined"],
            f"/quarantine/{ids['quarantined']}": "Re-dispatch",
            "/api": "/api/batches/{batch_id}",
            "/login": "Sign in",
        }
        for path, text in pages.items():
            reply = await api.get(path)
            assert reply.status_code == 200, path
            assert text in reply.text, path
            assert XSS not in reply.text, f"{path} renders markup from user data"
            csp = reply.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert reply.headers["x-content-type-options"] == "nosniff" and reply.headers["x-frame-options"] == "DENY"
            assert "<script>" not in reply.text.replace('<script src="/static/console.js" defer></script>', "")
        batch = (await api.get(f"/batches/{ids['open']}")).text
        assert "S-&lt;script&gt;window.__xss=1&lt;/script&gt;" in batch and "ValueError: &lt;script&gt;" in batch
        assert (await api.get("/batches/NOPE:0:0")).status_code == 404
        assert (await api.get("/batches", params={"q": ids["dead"]})).headers["location"] == "/batches/PAGES:0:1"
        assert (await api.get("/static/console.js")).headers["content-type"].startswith("text/javascript")
        # DNS rebinding: a page served under another name is refused
        assert (await api.get("/", headers={"Host": "evil.example"})).status_code == 400


async def test_actions_need_a_signed_in_session_a_csrf_token_and_the_same_origin(
    redis_server: RedisServer, store: BatchStore
) -> None:
    ids = await _data(store)
    replay = f"/dead/{ids['dead']}/replay"
    same = {"Origin": ORIGIN}
    async with client(_settings(redis_server), store) as api:
        not_signed_in = await api.post(replay, data={"csrf": "x"}, headers=same)
        assert not_signed_in.status_code == 403 and "sign in first" in not_signed_in.text
        wrong = await api.post("/login", data={"token": "guess"}, headers=same)
        assert wrong.status_code == 403 and "wrong token" in wrong.text and "set-cookie" not in wrong.headers
        assert (await api.post("/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"})).status_code == 403
        csrf = await _sign_in(api)
        for data, headers, why in (
            ({}, same, "CSRF token"),
            ({"csrf": "0" * 64}, same, "CSRF token"),
            ({"csrf": csrf}, {"Origin": "http://evil.example"}, "cross-origin"),
            ({"csrf": csrf}, {"Referer": "http://evil.example/dead"}, "cross-origin"),
            ({"csrf": csrf}, {}, "cross-origin"),  # neither Origin nor Referer
        ):
            refused = await api.post(replay, data=data, headers=headers)
            assert refused.status_code == 403 and why in refused.text, (data, headers)
        assert (await store.batch_meta(ids["dead"]))["state"] == "dead"
        done = await api.post(replay, data={"csrf": csrf}, headers=same)
        assert done.status_code == 200 and f"{ids['dead']}: queued for upload" in done.text
        assert (await store.batch_meta(ids["dead"]))["state"] == "finalized"
        again = await api.post(replay, data={"csrf": csrf}, headers={"Referer": f"{ORIGIN}/dead"})
        assert again.status_code == 409 and "not dead-lettered (state: finalized)" in again.text
        all_of_them = await api.post("/dead/replay-all", data={"csrf": csrf}, headers=same)
        assert all_of_them.status_code == 200 and "no dead-lettered batches" in all_of_them.text
        # a session cookie from another token (or a forged one) is no session
        other = _settings(redis_server, token="another-token-0123456789")
        async with client(other, store) as api2:
            api2.cookies = api.cookies
            assert (await api2.post(replay, data={"csrf": csrf}, headers=same)).status_code == 403
        out = await api.post("/logout", data={"csrf": csrf}, headers=same)
        assert out.status_code == 303 and 'bf_session=""' in out.headers["set-cookie"]


async def test_read_only_console_refuses_every_action(redis_server: RedisServer, store: BatchStore) -> None:
    ids = await _data(store)
    async with client(_settings(redis_server, token=None), store) as api:
        page = (await api.get("/dead")).text
        assert "read-only" in page and 'id="replay-all" disabled' in page
        for path in (f"/dead/{ids['dead']}/replay", "/dead/replay-all", f"/quarantine/{ids['quarantined']}/redispatch", "/login"):
            reply = await api.post(path, data={"csrf": "", "token": ""}, headers={"Origin": ORIGIN})
            assert reply.status_code == 403 and "BATCHFLEET_WEB_TOKEN is not set" in reply.text, path
    assert (await store.batch_meta(ids["dead"]))["state"] == "dead"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", ""])
async def test_sign_in_never_redirects_off_the_console(redis_server: RedisServer, store: BatchStore, target: str) -> None:
    async with client(_settings(redis_server), store) as api:
        reply = await api.post("/login", data={"token": TOKEN, "next": target}, headers={"Origin": ORIGIN})
        assert reply.status_code == 303 and reply.headers["location"] == "/"


async def test_redispatch_form_refuses_a_truncated_value_sent_unchanged(redis_server: RedisServer, store: BatchStore) -> None:
    ids = await _data(store)  # the quarantined message was 100 bytes longer than what was kept
    async with client(_settings(redis_server), store) as api:
        csrf = await _sign_in(api)
        page = (await api.get(f"/quarantine/{ids['quarantined']}")).text
        assert "only the first" in page
        stored = '{"stationData": [' + XSS
        reply = await api.post(
            f"/quarantine/{ids['quarantined']}/redispatch", data={"csrf": csrf, "value": stored}, headers={"Origin": ORIGIN}
        )
        assert reply.status_code == 409 and "was truncated in quarantine" in reply.text
