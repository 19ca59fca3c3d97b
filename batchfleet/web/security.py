"""The console's security model, in one place.

- **Reads** need nothing: whoever reaches the address may look (bind 127.0.0.1 by default).  Every
  request must name an allowed ``Host`` (loopback names, the bind address, ``web_allowed_hosts``),
  which defeats DNS rebinding of a loopback console by a web page.
- **Actions** (every POST) need ``BATCHFLEET_WEB_TOKEN``; without it the console is read-only.
  The JSON API takes it as ``Authorization: Bearer TOKEN``.  A browser signs in once with the token
  and gets a session cookie (HttpOnly, SameSite=Strict, Secure over https or with
  ``BATCHFLEET_WEB_SECURE_COOKIES``), signed with a random key made at start (not derived from the
  token) and listed server-side: signing out revokes it, a restart (which a token change needs)
  ends every session.  Each form then carries a CSRF token derived from the session, and the
  request's ``Origin`` (or ``Referer``) must be this console.
- **Before any body is read** (:class:`Gate`): a body over its limit is refused (413, by its
  ``Content-Length`` or while it streams in); an API action is authenticated from its headers, a
  form action's session cookie is checked before its form is read; wrong tokens are throttled per
  client and in total (429 with ``Retry-After``).  Live streams are capped per client and in total (429 / 503).
- Pages send a strict Content-Security-Policy (scripts and styles from the console only, no inline
  script), and render user data (station ids, errors, payloads) through autoescaping templates; the
  JavaScript only ever sets ``textContent``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchfleet.settings import Settings

__all__ = [
    "CSRF_FIELD",
    "LOGIN_MAX_BODY_BYTES",
    "SESSION_COOKIE",
    "FailureThrottle",
    "Gate",
    "Guard",
    "SecurityHeaders",
    "StreamSlots",
    "set_session_cookie",
]

SESSION_COOKIE = "bf_session"
CSRF_FIELD = "csrf"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000  # live sign-ins kept server-side; the oldest is revoked beyond this
LOGIN_MAX_BODY_BYTES = 16 * 1024  # the sign-in form: a token and a return path
MAX_BODY_BYTES = 4 * 1024 * 1024  # any other request (the re-dispatch form carries a corrected message)
FAILURES_PER_CLIENT = 10  # wrong tokens per client per window before 429
FAILURES_TOTAL = 100  # wrong tokens from all clients per window before 429 for everyone
FAILURE_WINDOW_S = 60.0
STREAMS_PER_CLIENT = 4  # open live streams (SSE) per client address
STREAMS_TOTAL = 64  # open live streams in all
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_WILDCARD_BINDS = ("0.0.0.0", "::", "")

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class FailureThrottle:
    """Wrong tokens in a sliding window, per client and in total: ``retry_after_s`` says how long a
    client must wait (None: it may try).  Memory is bounded: at most ``max_clients`` are tracked."""

    def __init__(
        self,
        per_client: int = FAILURES_PER_CLIENT,
        total: int = FAILURES_TOTAL,
        window_s: float = FAILURE_WINDOW_S,
        max_clients: int = 10_000,
    ) -> None:
        self.per_client, self.total, self.window_s, self.max_clients = per_client, total, window_s, max_clients
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_s:
            times.popleft()

    def retry_after_s(self, client: str, now: float | None = None) -> int | None:
        now = time.monotonic() if now is None else now
        self._trim(self._all, now)
        waits = []
        if len(self._all) >= self.total:
            waits.append(self._all[-self.total] + self.window_s - now)
        mine = self._clients.get(client)
        if mine is not None:
            self._trim(mine, now)
            if len(mine) >= self.per_client:
                waits.append(mine[-self.per_client] + self.window_s - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._all.append(now)
        while len(self._all) > self.total:
            self._all.popleft()
        mine = self._clients.pop(client, None) or deque(maxlen=self.per_client)
        mine.append(now)
        self._clients[client] = mine
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)

    def forgive(self, client: str) -> None:
        """Take back the latest attempt of ``client`` (a sign-in is counted when it starts, so that
        parallel guesses cannot all pass before the first is counted; the right token is forgiven)."""
        mine = self._clients.get(client)
        if mine:
            mine.pop()
            if self._all:
                self._all.pop()


class StreamSlots:
    """Open live streams per client address and in total."""

    def __init__(self, per_client: int = STREAMS_PER_CLIENT, total: int = STREAMS_TOTAL) -> None:
        self.per_client, self.total = per_client, total
        self._open: dict[str, int] = {}

    def take(self, client: str) -> int | None:
        """Take a slot (None) or say why not: 429 (this client has too many) or 503 (the console has)."""
        if self._open.get(client, 0) >= self.per_client:
            return 429
        if sum(self._open.values()) >= self.total:
            return 503
        self._open[client] = self._open.get(client, 0) + 1
        return None

    def give_back(self, client: str) -> None:
        left = self._open.get(client, 0) - 1
        if left > 0:
            self._open[client] = left
        else:
            self._open.pop(client, None)

    @property
    def open(self) -> int:
        return sum(self._open.values())


def client_of(scope: Scope | Request) -> str:
    """The client's address (behind a trusted proxy, uvicorn puts the forwarded one here)."""
    client = scope.client if isinstance(scope, Request) else scope.get("client")
    return str(client[0]) if client else "?"


class Guard:
    """Token, session and CSRF checks.  Sessions are HMACs under a random key made at start and are
    listed here, so signing out revokes one and a restart ends them all."""

    def __init__(self, settings: Settings) -> None:
        token = settings.web_token.get_secret_value() if settings.web_token is not None else None
        self._digest = hashlib.sha256(token.encode()).digest() if token else None
        self._key = secrets.token_bytes(32)
        self._sessions: OrderedDict[str, float] = OrderedDict()  # nonce -> issued (s)
        self.secure_cookies = settings.web_secure_cookies
        self.failures = FailureThrottle()
        self.streams = StreamSlots()
        hosts = [*_LOOPBACK, *settings.web_allowed_hosts]
        if settings.web_host not in _WILDCARD_BINDS:
            hosts.append(settings.web_host)
        self.allowed_hosts = sorted(set(hosts))

    @property
    def writable(self) -> bool:
        """Actions are possible at all (a token is configured)."""
        return self._digest is not None

    def check_token(self, presented: str | None) -> bool:
        if self._digest is None or not presented:
            return False
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._digest)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def new_session(self, now_s: float | None = None) -> str:
        """A session cookie value ``ISSUED.NONCE.SIGNATURE``, listed as live until it ends."""
        issued = int(now_s if now_s is not None else time.time())
        nonce = secrets.token_urlsafe(16)
        self._sessions[nonce] = issued
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        value = f"{issued}.{nonce}"
        return f"{value}.{self._sign('session', value)}"

    def revoke(self, nonce: str | None) -> None:
        """End a session server-side (sign-out): its cookie is refused from now on."""
        if nonce is not None:
            self._sessions.pop(nonce, None)

    def session(self, request: Request, now_s: float | None = None) -> str | None:
        """The session's nonce when the request carries a valid, unexpired session cookie."""
        if not self.writable:
            return None
        issued, _, rest = (request.cookies.get(SESSION_COOKIE) or "").partition(".")
        nonce, _, signature = rest.partition(".")
        if not (issued.isdigit() and nonce and signature):
            return None
        if not hmac.compare_digest(signature, self._sign("session", f"{issued}.{nonce}")):
            return None
        age = (now_s if now_s is not None else time.time()) - int(issued)
        if not 0 <= age <= SESSION_TTL_S:
            self.revoke(nonce)
            return None
        return nonce if self._sessions.get(nonce) == int(issued) else None

    def csrf_token(self, nonce: str | None) -> str:
        return self._sign("csrf", nonce) if nonce else ""

    def check_csrf(self, nonce: str | None, presented: str | None) -> bool:
        return bool(nonce and presented) and hmac.compare_digest(self.csrf_token(nonce), presented or "")

    @staticmethod
    def same_origin(request: Request, *, required: bool) -> bool:
        """The request's Origin (else Referer) names this console's host.  ``required``: a request
        with neither header is refused (browsers always send Origin with a form POST)."""
        source = request.headers.get("origin") or request.headers.get("referer")
        if not source or source == "null":
            return not required and source is None
        return urlsplit(source).netloc.lower() == request.headers.get("host", "").lower()


def set_session_cookie(response: Response, value: str, *, secure: bool, path: str) -> None:
    """Attach the session cookie (HttpOnly, SameSite=Strict) to a response."""
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_TTL_S, path=path, secure=secure, httponly=True, samesite="strict")


def _refusal(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


class Gate:
    """Pure ASGI middleware: what is decided before the app reads a request's body.

    - a body over its limit: 413, by ``Content-Length`` before anything is read, or as soon as a
      streamed (chunked) body passes it;
    - ``POST /login`` and ``POST /api/...``: 429 with ``Retry-After`` while the client (or everyone)
      has too many wrong tokens in the window;
    - ``POST /api/...``: read-only console, cross-origin request or a wrong bearer token are refused
      here (403 / 401), from the headers alone; a wrong token counts as a failure.

    Form actions check their session cookie before reading the form (``pages._action_form``)."""

    def __init__(self, app: ASGIApp, guard: Guard, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.guard = guard
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _app_path(scope)
        limit = LOGIN_MAX_BODY_BYTES if path == "/login" else self.max_body_bytes
        refusal = self._too_large(scope, limit)
        if refusal is None and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            refusal = self._before_body(Request(scope), path)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, _limited(receive, limit), send)

    @staticmethod
    def _too_large(scope: Scope, limit: int) -> Response | None:
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is None:
            return None
        if not declared.isdigit():
            return _refusal(400, "bad Content-Length")
        if int(declared) > limit:
            return _refusal(413, f"request body over {limit} bytes")
        return None

    def _before_body(self, request: Request, path: str) -> Response | None:
        guard = self.guard
        client = client_of(request)
        api = path.startswith("/api/")
        if path == "/login" or api:
            wait = guard.failures.retry_after_s(client)
            if wait is not None:
                return _refusal(429, "too many wrong tokens: try again later", {"Retry-After": str(wait)})
        if path == "/login":
            guard.failures.failed(client)  # counted now, forgiven on success (parallel guesses are counted too)
        return self._api_refusal(request, client) if api else None

    def _api_refusal(self, request: Request, client: str) -> Response | None:
        guard = self.guard
        if not guard.writable:
            return _refusal(403, "read-only console: BATCHFLEET_WEB_TOKEN is not set")
        if not Guard.same_origin(request, required=False):
            return _refusal(403, "cross-origin request refused")
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not guard.check_token(presented.strip()):
            if presented:
                guard.failures.failed(client)
            return _refusal(401, "this action needs the console token (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"})
        return None


def _app_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "")).rstrip("/")
    return path[len(root) :] if root and path.startswith(root) else path


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 once more than ``limit`` body bytes came in."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"request body over {limit} bytes")
        return message

    return limited


class SecurityHeaders:
    """Pure ASGI middleware: the CSP and friends on every HTTP response."""

    def __init__(self, app: ASGIApp, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.app = app
        self.headers = [*_HEADERS, *extra]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in self.headers if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
