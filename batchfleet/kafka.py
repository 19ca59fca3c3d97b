"""How every Kafka client of batchfleet connects: the one place the security settings become aiokafka
arguments, and the start-up check that tells a misconfiguration from an outage.

- :func:`client_options`: ``bootstrap_servers``, ``security_protocol``, the SASL arguments and an
  :class:`ssl.SSLContext` (aiokafka's ``create_ssl_context``) for every client: the dispatcher's
  consumer, the ``kafka://`` uploader, ``inspect quarantine --redispatch``.  A certificate or key
  file that is missing or does not load is a ConfigError.
- :func:`wait_for_kafka`: connect to a bootstrap broker once before a client starts.  Refused
  credentials and a TLS handshake that fails (an untrusted certificate, a client certificate the
  broker requires) are a ConfigError (exit 2), said in one line; a host that does not resolve or a
  broker that is down is waited for with backoff, and the log line says which.  aiokafka itself
  retries all of these forever without saying why (its bootstrap keeps only "Unable to bootstrap").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from batchfleet.errors import ConfigError
from batchfleet.retry import describe, exception_chain, retry
from batchfleet.settings import Settings, kafka_security_problem

__all__ = ["check_kafka", "client_options", "kafka_config_error", "ssl_context", "wait_for_kafka"]

_PROBE_TIMEOUT_MS = 10_000  # connect, TLS handshake, SASL login and the metadata request, each
_SASL_REFUSED = (SaslAuthenticationFailed, AuthenticationFailedError, IllegalSaslStateError, UnsupportedSaslMechanismError)
_CREDENTIALS = "BATCHFLEET_KAFKA_SASL_USERNAME, BATCHFLEET_KAFKA_SASL_PASSWORD, BATCHFLEET_KAFKA_SASL_MECHANISM"
_TLS = "BATCHFLEET_KAFKA_SSL_CAFILE (and BATCHFLEET_KAFKA_SSL_CERTFILE/KEYFILE for mutual TLS)"


def _readable(variable: str, path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"{variable}={str(path)!r}: no such file")
    return str(path)


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of every Kafka connection: the given CA (else the system's), the client
    certificate for mutual TLS; host names are checked."""
    cafile = _readable("BATCHFLEET_KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile)
    certfile = _readable("BATCHFLEET_KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile)
    keyfile = _readable("BATCHFLEET_KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile)
    # never None: OpenSSL would ask for an encrypted key's password on the terminal and wait
    password = settings.kafka_ssl_key_password.get_secret_value() if settings.kafka_ssl_key_password else ""
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile, password=password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        problem = "the CA, certificate or key does not load (or BATCHFLEET_KAFKA_SSL_KEY_PASSWORD is wrong)"
        raise ConfigError(f"{_TLS}: {problem}: {describe(exc)}") from exc
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments every aiokafka client of batchfleet is built with (never log them: they
    hold the SASL password)."""
    problem = kafka_security_problem(settings)
    if problem:
        raise ConfigError(problem)
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap_servers, "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    if protocol.startswith("SASL_") and settings.kafka_sasl_password is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def kafka_config_error(exc: BaseException, where: str, *, sasl: bool = True) -> ConfigError | None:
    """The configuration error a failed Kafka connection reveals (refused credentials, a failed TLS
    handshake), or None when Kafka is merely unavailable.  ``sasl``: the connection logged in."""
    chain = exception_chain(exc)
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)  # before ValueError: a verify error is one
    if tls is not None:
        return ConfigError(f"{_TLS}: TLS with kafka at {where} failed: {describe(tls)}")
    if any(isinstance(e, _SASL_REFUSED) for e in chain) or (sasl and isinstance(exc, KeyError | ValueError)):
        # KeyError/ValueError come from aiokafka's SCRAM client: a server's error reply ("e=...") has no
        # signature ("v=") to check, or the signature is wrong
        return ConfigError(f"{_CREDENTIALS}: kafka at {where} refused the credentials: {describe(exc)}")
    return None


def _address(server: str) -> tuple[str, int]:
    host, _, port = server.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS: {server.strip()!r} is not host:port")
    return host.strip("[]"), int(port)


async def _resolves(host: str, port: int) -> bool:
    try:
        await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return True


def _hint(exc: BaseException, options: dict[str, Any]) -> str:
    """An outage's description; a TLS connection that timed out may be TLS against a plain listener
    (a Kafka broker waits for the rest of what it takes for a request), so say so."""
    if isinstance(exc, TimeoutError) and "ssl_context" in options:
        return f"{describe(exc)} (no TLS handshake within {_PROBE_TIMEOUT_MS // 1000} s: is it a TLS listener?)"
    return describe(exc)


async def _connect_once(settings: Settings, options: dict[str, Any]) -> set[str]:
    """Connect (TLS, SASL) to the first bootstrap broker that answers, read the names of the
    cluster's topics (a request that creates none), then hang up."""
    servers = [_address(s) for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]
    reasons = []
    for host, port in servers:
        if not await _resolves(host, port):
            reasons.append(f"kafka host {host} does not resolve")
            continue
        kwargs = {k: v for k, v in options.items() if k != "bootstrap_servers"}
        try:
            conn = await create_conn(host, port, client_id="batchfleet-check", request_timeout_ms=_PROBE_TIMEOUT_MS, **kwargs)
        except Exception as exc:
            misconfigured = kafka_config_error(exc, f"{host}:{port}", sasl=str(options["security_protocol"]).startswith("SASL_"))
            if misconfigured is not None:
                raise misconfigured from exc
            reasons.append(f"{host}:{port}: {_hint(exc, options)}")
            continue
        try:
            metadata = await conn.send(MetadataRequest(None, allow_auto_topic_creation=False))
        except Exception as exc:
            reasons.append(f"{host}:{port}: {describe(exc)}")
            continue
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return {str(topic[1]) for topic in metadata.topics}  # (error_code, name, ...) in every version
    raise KafkaConnectionError("; ".join(reasons))


async def check_kafka(settings: Settings) -> set[str]:
    """One attempt of :func:`wait_for_kafka` (for a CLI command): KafkaConnectionError when no
    bootstrap broker answers, ConfigError when one refuses our credentials or TLS."""
    return await _connect_once(settings, client_options(settings))


async def wait_for_kafka(settings: Settings, stop: asyncio.Event | None, what: str) -> set[str]:
    """The cluster's topic names, once a bootstrap broker accepts a connection with our TLS and SASL
    settings; refused credentials or a failed TLS handshake raise ConfigError; ``stop`` raises
    StopRequested."""
    options = client_options(settings)
    return await retry(lambda: _connect_once(settings, options), what=what, service="kafka", stop=stop)
