"""The console's security model, in one place.

- **Reads** need nothing: whoever reaches the address may look (bind 127.0.0.1 by default).  Every
  request must name an allowed ``Host`` (loopback names, the bind address, ``web_allowed_hosts``),
  which defeats DNS rebinding of a loopback console by a web page.
- **Actions** (every POST) need ``BATCHFLEET_WEB_TOKEN``; without it the console is read-only.
  The JSON API takes it as ``Authorization: Bearer TOKEN``.  A browser signs in once with the token
  and gets a session cookie (HttpOnly, SameSite=Strict, signed with a key derived from the token, so
  changing the token ends every session); each form then carries a CSRF token derived from the
  session, and the request's ``Origin`` (or ``Referer``) must be this console.
- Pages send a strict Content-Security-Policy (scripts and styles from the console only, no inline
  script), and render user data (station ids, errors, payloads) through autoescaping templates; the
  JavaScript only ever sets ``textContent``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchfleet.settings import Settings

__all__ = ["CSRF_FIELD", "SESSION_COOKIE", "Guard", "SecurityHeaders", "set_session_cookie"]

SESSION_COOKIE = "bf_session"
CSRF_FIELD = "csrf"
SESSION_TTL_S = 12 * 3600
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


class Guard:
    """Token, session and CSRF checks (stateless: everything is an HMAC under a key derived from the token)."""

    def __init__(self, settings: Settings) -> None:
        token = settings.web_token.get_secret_value() if settings.web_token is not None else None
        self._digest = hashlib.sha256(token.encode()).digest() if token else None
        self._key = hashlib.sha256(b"batchfleet-web-session:" + token.encode()).digest() if token else b""
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
        """A session cookie value ``ISSUED.NONCE.SIGNATURE``."""
        value = f"{int(now_s if now_s is not None else time.time())}.{secrets.token_urlsafe(16)}"
        return f"{value}.{self._sign('session', value)}"

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
        return nonce if 0 <= age <= SESSION_TTL_S else None

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
