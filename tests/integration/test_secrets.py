"""No secret is ever printed: a canary string goes into every secret setting, then every error path
we know is driven through the real CLI and real processes, and the canary must not appear in any
output or log line.

The secret settings are found in ``Settings`` itself, not listed here: every ``SecretStr`` field (a
URL among them gets the canary as its password), plus the URL settings that may carry a password
(``*_url`` and ``uploader``).  A secret setting added later is covered without touching this file.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import get_args

import httpx
import pytest
from pydantic import SecretStr

from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import RedisServer, free_port
from batchfleet_dev.procs import RoleProcess, role_env, until_while_alive
from tests.integration.fleet import REPO, make_settings
from tests.integration.webdata import client, spec

MARK = secrets.token_hex(6)  # 12 characters; every secret below contains it
PASSWORD = f"pw-{MARK}-pw"
ACL = ["--user", "default", "off", "--user", "fleet", "on", f">{PASSWORD}", "~*", "&*", "+@all"]


def secret_fields() -> list[str]:
    return [name for name, f in Settings.model_fields.items() if SecretStr in (f.annotation, *get_args(f.annotation))]


def url_fields() -> list[str]:
    return [name for name in Settings.model_fields if name.endswith("_url") or name == "uploader"]


def test_the_discovery_finds_the_known_secrets() -> None:
    """The discovery is not empty by accident: today's secret settings are among what it finds."""
    assert {"redis_url", "upload_auth_header", "web_token", "kafka_sasl_password", "kafka_ssl_key_password"} <= set(secret_fields())
    assert {"redis_url", "uploader"} <= set(url_fields())


def canary_env(redis_port: int, *, password: str = PASSWORD, **extra: str) -> dict[str, str]:
    """Every secret setting holds the canary: URLs as their password, the rest as their value."""
    values: dict[str, str] = {}
    for name in secret_fields():
        values[name] = f"{name}-{MARK}-{'x' * 20}"
    for name in url_fields():
        values[name] = f"http://user:{password}@127.0.0.1:{free_port()}/upload"
    values["redis_url"] = f"redis://fleet:{password}@127.0.0.1:{redis_port}/0"
    env = role_env(None, {f"BATCHFLEET_{k.upper()}": v for k, v in values.items()})
    env |= {"BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "BATCHFLEET_TOPICS": "T-secret"}
    env |= {"BATCHFLEET_PROCESSOR": "tests.integration.processors:async_process", "BATCHFLEET_WORKER_GRACE_S": "1"}
    if "kafka_sasl_password" in values or "kafka_ssl_key_password" in values:  # the settings those secrets go with
        cert, key = _client_key_pair(values.get("kafka_ssl_key_password", ""))
        env |= {"BATCHFLEET_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "BATCHFLEET_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
        env |= {"BATCHFLEET_KAFKA_SASL_USERNAME": "fleet", "BATCHFLEET_KAFKA_SSL_CERTFILE": str(cert)}
        env |= {"BATCHFLEET_KAFKA_SSL_KEYFILE": str(key)}
    return env | {f"BATCHFLEET_{k}": v for k, v in extra.items()}


_KEY_PAIRS: dict[str, tuple[Path, Path]] = {}


@pytest.fixture(scope="module", autouse=True)
def _client_key_pairs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A client certificate and its key, encrypted with the canary key password, so the Kafka TLS
    settings the canary's secrets belong to load for real (openssl, as the secured-Kafka tests use it)."""
    for password in ("", f"kafka_ssl_key_password-{MARK}-{'x' * 20}"):
        directory = tmp_path_factory.mktemp("kafka-client")
        cert, key = directory / "client.pem", directory / "client.key"
        encrypt = ["-passout", f"pass:{password}"] if password else ["-nodes"]
        request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", *encrypt, "-days", "2", "-subj", "/CN=fleet"]
        subprocess.run([*request, "-keyout", key, "-out", cert], check=True, capture_output=True)
        _KEY_PAIRS[password] = (cert, key)


def _client_key_pair(key_password: str) -> tuple[Path, Path]:
    return _KEY_PAIRS[key_password]


def clean(text: str) -> None:
    assert MARK not in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def cli(env: dict[str, str], *args: str, code: int) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "batchfleet", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    out = done.stdout + done.stderr
    clean(out)
    assert done.returncode == code, (args, done.returncode, out)
    return out


@pytest.fixture
def acl_redis() -> object:
    server = RedisServer(extra_args=ACL).start()
    yield server
    server.stop()


SETTINGS_ERRORS: list[tuple[str, dict[str, str]]] = [
    ("sentinels without a master", {"REDIS_SENTINELS": "127.0.0.1:26379"}),
    ("sentinels and cluster", {"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_CLUSTER": "true"}),
    ("a number that is not", {"WEB_PORT": "eighty"}),
    ("JSON that does not parse", {"PRIORITIES": "{not json"}),
    ("an unknown variable", {"WEB_TOKN": f"typo-{MARK}"}),
    ("a short web token", {"WEB_TOKEN": MARK}),
    ("a blank web token", {"WEB_TOKEN": " " * 30}),
    ("a '#' in the redis password", {"REDIS_URL": f"redis://fleet:{MARK}#{MARK}@127.0.0.1:1/0"}),
    ("a '/' in the redis password", {"REDIS_URL": f"redis://fleet:{MARK}/{MARK}@127.0.0.1:1/0"}),
    ("a '?' in the redis password", {"REDIS_URL": f"redis://fleet:{MARK}?{MARK}@127.0.0.1:1/0"}),
    ("a '[' in the redis password", {"REDIS_URL": f"redis://fleet:{MARK}[{MARK}@127.0.0.1:1/0"}),
    ("a port that is no number", {"REDIS_URL": f"redis://127.0.0.1:{MARK}/0"}),
    ("a bad redis scheme", {"REDIS_URL": f"http://fleet:{MARK}@127.0.0.1:1/0"}),
    ("a CR in the upload auth header", {"UPLOAD_AUTH_HEADER": f"Bearer {MARK}\r"}),
    ("a newline in the upload auth header", {"UPLOAD_AUTH_HEADER": f"Bearer {MARK}\nX-Other: 1"}),
]


@pytest.mark.parametrize("extra", [e for _, e in SETTINGS_ERRORS], ids=[n for n, _ in SETTINGS_ERRORS])
@pytest.mark.parametrize("command", [["status"], ["worker"], ["web"]])
def test_settings_errors_name_the_problem_without_the_secrets(extra: dict[str, str], command: list[str]) -> None:
    out = cli(canary_env(1, **extra), *command, code=2)
    assert len(out.strip().splitlines()) == 1, out


UPLOADER_ERRORS = [
    f"ftp://user:{MARK}@127.0.0.1/x",
    f"http://user:{MARK}#x@127.0.0.1/up",
    f"https://user:{MARK}@127.0.0.1:port/up",
    f"mod.{MARK}",
]


@pytest.mark.parametrize("uploader", UPLOADER_ERRORS)
def test_uploader_errors_do_not_echo_the_target(uploader: str) -> None:
    out = cli(canary_env(1, UPLOADER=uploader), "aggregator", code=2)
    assert "BATCHFLEET_UPLOADER" in out and len(out.strip().splitlines()) == 1, out


def test_an_unencoded_redis_password_is_named_as_such() -> None:
    out = cli(canary_env(1, REDIS_URL=f"redis://:{MARK}#ss@127.0.0.1:6379/0"), "status", code=2)
    assert "BATCHFLEET_REDIS_URL" in out and "unencoded ('#', '/', '?' must be percent-encoded)" in out, out
    assert "ss:6379" not in out


def test_a_bad_flag_value_and_a_bad_config_file(tmp_path: Path) -> None:
    env = canary_env(1)
    cli(env, "status", "--redis-url", f"redis://u:{MARK}#x@127.0.0.1:1/0", code=2)
    bad = tmp_path / "topics.toml"
    bad.write_text('[topics."T"]\ntimeout_s = "soon"\n')
    cli(env | {"BATCHFLEET_CONFIG": str(bad)}, "status", code=2)
    bad.write_text("not = [toml")
    cli(env | {"BATCHFLEET_CONFIG": str(bad)}, "status", code=2)


OPERATOR_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["inspect", "batch", "T-secret:0:0"],
    ["inspect", "batches"],
    ["inspect", "dead"],
    ["inspect", "quarantine"],
    ["inspect", "quarantine", "--redispatch", "T-secret:0:0"],
    ["replay", "--all"],
]


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=" ".join)
def test_unreachable_redis(command: list[str]) -> None:
    cli(canary_env(free_port()), *command, code=1)


def test_health_with_unreachable_redis() -> None:
    cli(canary_env(free_port()), "health", "worker", code=1)


def test_wrong_redis_password(acl_redis: RedisServer) -> None:
    env = canary_env(acl_redis.port, password=f"wrong-{MARK}")
    for command in (["status"], ["inspect", "batches"], ["aggregator"], ["worker"], ["dispatcher"]):
        out = cli(env, *command, code=2)
        assert "refused the credentials" in out, out
    cli(env, "health", "worker", code=1)


def test_status_health_and_reads_with_every_secret_set(acl_redis: RedisServer) -> None:
    env = canary_env(acl_redis.port)
    for command in (["status"], ["status", "--json"], ["inspect", "batches"], ["inspect", "dead"], ["replay", "--all"]):
        cli(env, *command, code=0)
    cli(env, "health", "worker", code=1)  # no worker runs: unhealthy, and says so without secrets
    cli(env, "inspect", "batch", "T-secret:0:0", code=1)


async def _role_logs(env: dict[str, str], role: str, tmp_path: Path, until: str) -> str:
    proc = RoleProcess(role, env, tmp_path / f"{role}.log")
    try:

        async def said() -> bool:
            return until in proc.log_tail(1_000_000)

        await until_while_alive(said, 60, f"{until!r} in the {role}'s log", [proc])
    finally:
        proc.signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
    return proc.log_tail(1_000_000)


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["human", "json"])
async def test_start_and_failure_log_lines(acl_redis: RedisServer, tmp_path: Path, log_format: str) -> None:
    """Every role's start-up lines, the Kafka waits, and an upload that fails (the uploader URL holds
    the canary as its password; the dead letter's error is read back through the CLI)."""
    env = canary_env(acl_redis.port, LOG_FORMAT=log_format, UPLOAD_MAX_ATTEMPTS="1", LOG_LEVEL="DEBUG")
    env["BATCHFLEET_WEB_PORT"] = str(free_port())
    store = BatchStore.from_url(f"redis://fleet:{PASSWORD}@127.0.0.1:{acl_redis.port}/0")
    try:
        await store.create_batch(spec("T-secret:0:0", ["S001"], timeout_s=0.001))
        logs = await asyncio.gather(
            _role_logs(env, "aggregator", tmp_path, "dead-letter"),
            _role_logs(env, "dispatcher", tmp_path, "kafka"),
            _role_logs(env, "worker", tmp_path, "ready"),
            _role_logs(env, "web", tmp_path, "console on"),
        )
    finally:
        await store.aclose()
    for log in logs:
        clean(log)
    out = cli(env, "inspect", "dead", code=0)
    assert "T-secret:0:0" in out and "POST http://127.0.0.1:" in out, out
    cli(env, "inspect", "dead", "--json", code=0)


@pytest.mark.slow
async def test_the_console_with_redis_unreachable(tmp_path: Path) -> None:
    """Every page and API read answers 503 with one log line each: no 500, no traceback, no secret."""
    env = canary_env(free_port()) | {"BATCHFLEET_WEB_PORT": str(free_port())}
    proc = RoleProcess("web", env, tmp_path / "web.log")
    url = f"http://127.0.0.1:{env['BATCHFLEET_WEB_PORT']}"
    try:

        async def up() -> bool:
            return "Uvicorn running" in proc.log_tail(1_000_000)

        await until_while_alive(up, 60, "the console listening", [proc])
        async with httpx.AsyncClient(base_url=url, timeout=10) as web:
            for path in ("/", "/batches", "/batches/T-secret:0:0", "/dead", "/quarantine", "/api/status", "/api/batches/T:0:0"):
                reply = await web.get(path)
                assert reply.status_code == 503 and "is unavailable" in reply.text, (path, reply.status_code)
                clean(reply.text)
            assert (await web.get("/healthz")).status_code == 503
    finally:
        proc.signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
    log = proc.log_tail(1_000_000)
    clean(log)
    assert "is unavailable: ConnectionError" in log


async def test_the_console_shows_no_secret(acl_redis: RedisServer) -> None:
    env = canary_env(acl_redis.port)
    settings = make_settings(
        f"redis://fleet:{PASSWORD}@127.0.0.1:{acl_redis.port}/0",
        "127.0.0.1:9",
        ["T-secret"],
        env["BATCHFLEET_UPLOADER"],
        **{name: env[f"BATCHFLEET_{name.upper()}"] for name in secret_fields() if name != "redis_url"},
    )
    store = BatchStore.from_settings(settings)
    try:
        await store.create_batch(spec("T-secret:0:0", ["S001"]))
        async with client(settings, store) as web:
            for path in ("/", "/batches", "/batches/T-secret:0:0", "/dead", "/quarantine", "/api/status", "/api", "/healthz"):
                reply = await web.get(path)
                assert reply.status_code == 200, (path, reply.status_code)
                clean(reply.text)
            reply = await web.post("/api/dead/replay-all", headers={"Authorization": f"Bearer wrong-{MARK}-{'y' * 20}"})
            assert reply.status_code == 401
            clean(reply.text)
    finally:
        await store.aclose()
