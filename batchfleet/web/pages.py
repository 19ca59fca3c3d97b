"""The console's HTML pages (Jinja2, autoescaped) and its form actions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Undefined

from batchfleet import ops
from batchfleet.errors import ConfigError
from batchfleet.settings import Settings
from batchfleet.web.security import CSRF_FIELD, SESSION_COOKIE, Guard, client_of, set_session_cookie
from batchfleet.web.state import guard_of, is_batch_id, store_of

__all__ = ["router", "templates"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
_STATION_PAGE = 500
_PAYLOAD_SHOWN_BYTES = 256 * 1024
_MAX_FORM_BYTES = 4 * 1024 * 1024
OUTCOMES = ("ok", "failed", "empty", "missing")


def _fmt_ms(value: Any) -> str:
    """Redis-time milliseconds as a UTC timestamp."""
    if isinstance(value, Undefined):
        return "-"
    try:
        ms = int(value)
    except (TypeError, ValueError):
        return "-"
    if ms <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d} UTC"


def _batch_url(base: str, batch_id: str) -> str:
    return f"{base}/batches/{quote(batch_id, safe=':')}"


templates.env.filters["ts"] = _fmt_ms
templates.env.globals["OUTCOMES"] = OUTCOMES


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


base_of = _base  # for the app's error handlers


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    guard = guard_of(request)
    nonce = guard.session(request)
    base = _base(request)
    context.update(
        base=base,
        writable=guard.writable,
        signed_in=nonce is not None,
        csrf=guard.csrf_token(nonce),
        csrf_field=CSRF_FIELD,
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        batch_url=lambda bid: _batch_url(base, bid),
    )
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


def _message(request: Request, status_code: int, title: str, text: str, links: list[tuple[str, str]] | None = None) -> HTMLResponse:
    return render(request, "message.html", status_code, title=title, text=text, links=links or [])


# -- reads -----------------------------------------------------------------------------------------
@router.get("/healthz")
async def healthz(request: Request) -> Response:
    """200 when Redis answers (the container health check)."""
    try:
        await asyncio.wait_for(store_of(request).ping(), timeout=3)
    except Exception as exc:
        return Response(f"redis unreachable: {type(exc).__name__}\n", status_code=503, media_type="text/plain")
    return Response("ok\n", media_type="text/plain")


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> HTMLResponse:
    data = await ops.overview_data(store_of(request))
    return render(request, "overview.html", page="overview", data=data)


@router.get("/batches", response_class=HTMLResponse)
async def batches(request: Request) -> Response:
    args = request.query_params
    state = args.get("state") or None
    topic = (args.get("topic") or "").strip() or None
    q = (args.get("q") or "").strip() or None
    store = store_of(request)
    if q and not state and not topic and is_batch_id(q) and await store.batch_meta(q):
        return RedirectResponse(_batch_url(_base(request), q), status_code=303)
    if state is not None and state not in ops.BATCH_STATES:
        return _message(request, 422, "Bad filter", f"unknown state {state!r}")
    try:
        page = await ops.batch_page(store, state=state, topic=topic, q=q, cursor=args.get("cursor"), limit=50)
    except ValueError as exc:
        return _message(request, 422, "Bad cursor", str(exc))
    filters = {"state": state or "", "topic": topic or "", "q": q or ""}
    return render(request, "batches.html", page="batches", result=page, filters=filters, states=ops.BATCH_STATES)


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
async def batch(request: Request, batch_id: str) -> HTMLResponse:
    store = store_of(request)
    data = await ops.batch_detail(store, batch_id) if is_batch_id(batch_id) else None
    if data is None:
        return _message(request, 404, "No such batch", f"no batch {batch_id} (never created, or expired after its retention)")
    outcome = request.query_params.get("outcome") or ""
    stations = [s for s in data["stations"] if not outcome or s["outcome"] == outcome]
    raw_start = request.query_params.get("start", "0")
    start = int(raw_start) if raw_start.isdigit() else 0
    mix = {name: sum(1 for s in data["stations"] if s["outcome"] == name) for name in OUTCOMES}
    body = await store.payload(batch_id)
    payload_text = None
    if body is not None:
        shown = body[:_PAYLOAD_SHOWN_BYTES]
        try:
            payload_text = orjson.dumps(orjson.loads(shown), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            payload_text = shown.decode("utf-8", errors="replace")
    return render(
        request,
        "batch.html",
        page="batch",
        b=data,
        meta=data["meta"],
        mix=mix,
        outcome=outcome,
        stations=stations[start : start + _STATION_PAGE],
        start=start,
        shown_count=len(stations),
        page_size=_STATION_PAGE,
        payload_bytes=len(body) if body is not None else None,
        payload_text=payload_text,
        payload_cut=body is not None and len(body) > _PAYLOAD_SHOWN_BYTES,
    )


@router.get("/dead", response_class=HTMLResponse)
async def dead(request: Request) -> HTMLResponse:
    try:
        page = await ops.dead_page(store_of(request), cursor=request.query_params.get("cursor"), limit=100)
    except ValueError as exc:
        return _message(request, 422, "Bad cursor", str(exc))
    return render(request, "dead.html", page="dead", result=page)


@router.get("/quarantine", response_class=HTMLResponse)
async def quarantine(request: Request) -> HTMLResponse:
    raw = request.query_params.get("offset", "0")
    offset = int(raw) if raw.isdigit() else 0
    rows = await ops.quarantine_page(store_of(request), offset=offset, limit=100)
    total = (await store_of(request).counts())["quarantined"]
    return render(request, "quarantine.html", page="quarantine", rows=rows, offset=offset, limit=100, total=total)


@router.get("/quarantine/{message_id}", response_class=HTMLResponse)
async def quarantined(request: Request, message_id: str) -> HTMLResponse:
    entry = await ops.quarantine_entry(store_of(request), message_id) if is_batch_id(message_id) else None
    if entry is None:
        return _message(request, 404, "Not in quarantine", f"no quarantined message {message_id}")
    return render(request, "quarantined.html", page="quarantine", entry=entry)


@router.get("/api", response_class=HTMLResponse)
async def api_reference(request: Request) -> HTMLResponse:
    """The API reference, rendered here from the OpenAPI schema (no third-party JavaScript)."""
    spec = request.app.openapi()
    return render(request, "api.html", page="api", spec=spec)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    return render(request, "login.html", page="login", next=_local(request.query_params.get("next")))


# -- sign-in and actions ---------------------------------------------------------------------------
async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}


def _local(target: str | None) -> str:
    """Only a path on this console is a valid place to return to (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    guard = guard_of(request)
    if not guard.writable:
        return _message(request, 403, "Read-only console", "BATCHFLEET_WEB_TOKEN is not set: there is nothing to sign in to.")
    if not Guard.same_origin(request, required=True):
        return _message(request, 403, "Refused", "cross-origin sign-in refused")
    form = await _form(request)  # the Gate let at most LOGIN_MAX_BODY_BYTES through, and not while throttled
    if not guard.check_token(form.get("token")):  # the Gate counted this attempt as a failure already
        await asyncio.sleep(0.5)  # slows down guessing
        return render(request, "login.html", 403, page="login", next=_local(form.get("next")), error="wrong token")
    guard.failures.forgive(client_of(request))
    response = RedirectResponse(_base(request) + _local(form.get("next")), status_code=303)
    secure = guard.secure_cookies or request.url.scheme == "https"
    set_session_cookie(response, guard.new_session(), secure=secure, path=_base(request) or "/")
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    refused, _ = await _action_form(request)
    if refused is not None:
        return refused
    guard_of(request).revoke(guard_of(request).session(request))  # ends it server-side, not only in this browser
    response = RedirectResponse(_base(request) + "/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=_base(request) or "/")
    return response


async def _action_form(request: Request) -> tuple[HTMLResponse | None, dict[str, str]]:
    """(why this action may not run, or None; its form).  Token configured, same origin and a live
    session are checked before the body is read; then the form's CSRF token."""
    guard = guard_of(request)
    came_from = urlsplit(request.headers.get("referer") or "").path[len(_base(request)) :]
    login = [("sign in", f"{_base(request)}/login?next={quote(_local(came_from))}")]
    if not guard.writable:
        return _message(request, 403, "Refused", "read-only console: BATCHFLEET_WEB_TOKEN is not set"), {}
    if not Guard.same_origin(request, required=True):
        return _message(request, 403, "Refused", "cross-origin request refused"), {}
    nonce = guard.session(request)
    if nonce is None:
        return _message(request, 403, "Refused", "this action needs the console token: sign in first", login), {}
    form = await _form(request)
    login = [("sign in", f"{_base(request)}/login?next={quote(_local(form.get('back')))}")]
    if not guard.check_csrf(nonce, form.get(CSRF_FIELD)):
        return _message(request, 403, "Refused", "missing or wrong CSRF token: reload the page and try again", login), form
    return None, form


@router.post("/dead/{batch_id}/replay", response_class=HTMLResponse)
async def replay(request: Request, batch_id: str) -> HTMLResponse:
    refused, _ = await _action_form(request)
    if refused is not None:
        return refused
    if not is_batch_id(batch_id):
        return _message(request, 404, "No such batch", f"{batch_id!r} is not a batch id (TOPIC:PARTITION:OFFSET)")
    [(bid, ok, state)] = await ops.replay(_settings(request), [batch_id], False)
    links = [("batch", _batch_url(_base(request), bid)), ("dead letters", f"{_base(request)}/dead")]
    if ok:
        return _message(request, 200, "Replayed", f"{bid}: queued for upload", links)
    return _message(request, 409, "Not replayed", f"{bid}: not dead-lettered (state: {state})", links)


@router.post("/dead/replay-all", response_class=HTMLResponse)
async def replay_all(request: Request) -> HTMLResponse:
    refused, _ = await _action_form(request)
    if refused is not None:
        return refused
    results = await ops.replay(_settings(request), [], True)
    done = sum(1 for _, ok, _ in results if ok)
    text = f"{done} dead-lettered batch(es) queued for upload" if results else "no dead-lettered batches"
    return _message(request, 200, "Replayed", text, [("dead letters", f"{_base(request)}/dead")])


@router.post("/quarantine/{message_id}/redispatch", response_class=HTMLResponse)
async def redispatch(request: Request, message_id: str) -> HTMLResponse:
    refused, form = await _action_form(request)
    if refused is not None:
        return refused
    entry = await store_of(request).quarantined_entry(message_id) if is_batch_id(message_id) else None
    if entry is None:
        return _message(request, 404, "Not in quarantine", f"no quarantined message {message_id}")
    value = form.get("value", "").replace("\r\n", "\n").encode()
    stored = entry.get("value", b"").replace(b"\r\n", b"\n")
    back = [("quarantine", f"{_base(request)}/quarantine")]
    try:
        where = await ops.redispatch(_settings(request), message_id, None if value == stored else value)
    except (LookupError, ValueError) as exc:
        return _message(request, 409, "Not re-dispatched", str(exc), back)
    except ConfigError as exc:  # Kafka refused our credentials or TLS
        return _message(request, 502, "Not re-dispatched", f"kafka refused the console: {exc}", back)
    except KafkaError as exc:
        return _message(request, 503, "Not re-dispatched", f"cannot reach kafka: {type(exc).__name__}", back)
    return _message(request, 200, "Re-dispatched", f"{message_id}: re-dispatched as {where}", back)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
