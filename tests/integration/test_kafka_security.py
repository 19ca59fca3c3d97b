"""A fleet against a secured Kafka: SASL/SCRAM, TLS, mutual TLS and SASL over TLS, and the one-line
exit 2 for a wrong password or an untrusted certificate; an unresolvable host and a missing topic
are waited for with the reason in the log.

TLS is real TLS (Debian's stunnel4 in front of tansu, certificates made by openssl); SASL/SCRAM is a
real SCRAM exchange with a SCRAM server in front of tansu, and the shipped tansu's own
``--authentication`` shows a refusal (batchfleet_dev.secure says why tansu cannot do more).  Each
front is started once per session; every test has its own topic and redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from batchfleet.dispatcher.service import Dispatcher
from batchfleet.kafka import client_options
from batchfleet.models import QuarantineEntry
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics
from batchfleet_dev.procs import RoleProcess
from batchfleet_dev.secure import Pki, ScramFront, Stunnel, make_pki
from tests.integration.fleet import REPO, batches_uploaded, fleet, make_settings, read_uploads, settings_env, wait_until

USER, PASSWORD = "fleet", "fleet-secret-4711"
FAIL_FAST_S = 30.0  # bound for "fails at start": one connection attempt, far below aiokafka's endless retries


@pytest.fixture(scope="session", autouse=True)
def stunnel_installed() -> None:
    """stunnel4 is installed by scripts/test (and .ci/run through it); without it these tests fail."""
    if shutil.which("stunnel4") is None and shutil.which("stunnel") is None:
        pytest.fail("stunnel4 is not installed: run scripts/test (it installs it) or apt-get install stunnel4", pytrace=False)


@dataclass
class Secured:
    """One secured way into a tansu broker: the address clients bootstrap from and their settings."""

    bootstrap: str
    security: dict[str, Any]
    front: ScramFront | None = None

    def settings(self, redis_url: str, topics: list[str], uploader: str, **overrides: Any) -> Settings:
        return make_settings(redis_url, self.bootstrap, topics, uploader, **(self.security | overrides))

    def options(self, **overrides: Any) -> dict[str, Any]:
        return client_options(Settings(kafka_bootstrap_servers=self.bootstrap, **(self.security | overrides)))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls(pki: Pki, directory: Path, *, client_ca: Path | None = None, target_port: int = 0) -> Stunnel:
    return Stunnel(directory, target_port, pki.server_cert, pki.server_key, client_ca=client_ca)


@pytest.fixture(scope="session")
def tls_kafka(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tunnel = _tls(pki, tmp_path_factory.mktemp("tls"))
    broker = KafkaBroker(advertised_port=tunnel.port).start()
    tunnel.target_port = broker.port
    tunnel.start()
    yield Secured(f"127.0.0.1:{tunnel.port}", {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": pki.ca})
    tunnel.stop()
    broker.stop()


@pytest.fixture(scope="session")
def mtls_kafka(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tunnel = _tls(pki, tmp_path_factory.mktemp("mtls"), client_ca=pki.ca)
    broker = KafkaBroker(advertised_port=tunnel.port).start()
    tunnel.target_port = broker.port
    tunnel.start()
    security = {
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": pki.ca,
        "kafka_ssl_certfile": pki.client_cert,
        "kafka_ssl_keyfile": pki.client_key,
    }
    yield Secured(f"127.0.0.1:{tunnel.port}", security)
    tunnel.stop()
    broker.stop()


_SASL = {"kafka_sasl_username": USER, "kafka_sasl_password": PASSWORD}


@pytest.fixture(scope="session")
def sasl_kafka() -> Iterator[Secured]:
    front = ScramFront(0, {USER: PASSWORD})
    broker = KafkaBroker(advertised_port=front.port).start()
    front.target_port = broker.port
    front.start()
    security = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512", **_SASL}
    yield Secured(f"127.0.0.1:{front.port}", security, front)
    front.stop()
    broker.stop()


@pytest.fixture(scope="session")
def sasl_ssl_kafka(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """SCRAM over TLS: stunnel -> the SCRAM front -> tansu."""
    tunnel = _tls(pki, tmp_path_factory.mktemp("sasl-ssl"))
    front = ScramFront(0, {USER: PASSWORD})
    broker = KafkaBroker(advertised_port=tunnel.port).start()
    front.target_port = broker.port
    front.start()
    tunnel.target_port = front.port
    tunnel.start()
    security = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_ssl_cafile": pki.ca,
        **_SASL,
    }
    yield Secured(f"127.0.0.1:{tunnel.port}", security, front)
    tunnel.stop()
    front.stop()
    broker.stop()


@pytest.fixture(scope="session")
def tansu_authentication() -> Iterator[Secured]:
    """tansu's own --authentication: it refuses every SCRAM login (it keeps no credentials)."""
    broker = KafkaBroker(extra_args=["--authentication"]).start()
    security = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-256", **_SASL}
    yield Secured(broker.bootstrap, security)
    broker.stop()


# (session fixture, setting overrides): SCRAM-SHA-512, TLS, mutual TLS, SCRAM-SHA-256 over TLS, PLAIN over TLS
MODES = [
    pytest.param("sasl_kafka", {}, id="sasl_plaintext-scram512"),
    pytest.param("tls_kafka", {}, id="ssl"),
    pytest.param("mtls_kafka", {}, id="ssl-mutual"),
    pytest.param("sasl_ssl_kafka", {}, id="sasl_ssl-scram256"),
    pytest.param("sasl_ssl_kafka", {"kafka_sasl_mechanism": "PLAIN"}, id="sasl_ssl-plain"),
]


async def _produce(secured: Secured, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(**secured.options())
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


@pytest.mark.parametrize(("mode", "overrides"), MODES)
async def test_a_fleet_runs_a_batch_through_a_secured_kafka(
    mode: str,
    overrides: dict[str, Any],
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    store: BatchStore,
    topic_name: str,
    tmp_path: Path,
) -> None:
    secured: Secured = request.getfixturevalue(mode)
    secured = Secured(secured.bootstrap, secured.security | overrides, secured.front)
    logins = secured.front.logins if secured.front else 0
    await create_topics(secured.bootstrap, [topic_name], **secured.options())
    out = tmp_path / "uploads.jsonl"
    settings = secured.settings(redis_server.url, [topic_name], f"file://{out}", batching="message")
    value = orjson.dumps({"stationData": [{"stationId": 1, "v": 1}, {"stationId": "S2", "v": 2}]})
    await _produce(secured, topic_name, [value])
    async with fleet(settings, workers=1):
        await wait_until(lambda: batches_uploaded(store, 1), 60, "the batch uploaded")
    [upload] = read_uploads(out)
    assert upload["batch_id"] == f"{topic_name}:0:0" and upload["summary"]["ok"] == 2, upload
    assert sorted(r["stationId"] for r in upload["results"]) == ["1", "S2"]  # the integer id became "1"
    if secured.front is not None:
        assert secured.front.logins > logins  # every connection logged in through SCRAM


@pytest.mark.slow
async def test_the_kafka_uploader_produces_over_sasl_ssl(
    sasl_ssl_kafka: Secured, redis_server: RedisServer, store: BatchStore, topic_name: str
) -> None:
    output = f"{topic_name}-out"
    await create_topics(sasl_ssl_kafka.bootstrap, [topic_name, output], **sasl_ssl_kafka.options())
    settings = sasl_ssl_kafka.settings(redis_server.url, [topic_name], f"kafka://{output}", batching="message")
    await _produce(sasl_ssl_kafka, topic_name, [orjson.dumps({"stationData": [{"stationId": "S1"}]})])
    async with fleet(settings, workers=1):
        await wait_until(lambda: batches_uploaded(store, 1), 60, "the batch uploaded")
    consumer = AIOKafkaConsumer(output, **sasl_ssl_kafka.options(), auto_offset_reset="earliest", group_id=f"{output}-reader")
    await consumer.start()
    try:
        got = await consumer.getone()
    finally:
        await consumer.stop()
    assert got.key == f"{topic_name}:0:0".encode()


# -- refused at start: one line, exit 2, fast ------------------------------------------------------------
def _start(role: str, settings: Settings, log: Path, *, uploader: str | None = None) -> tuple[int, str, float]:
    """Run ROLE until it exits (bounded); (exit code, its output, seconds)."""
    env = settings_env(settings if uploader is None else settings.model_copy(update={"uploader": uploader}))
    started = time.monotonic()
    proc = RoleProcess(role, env, log)
    code = proc.wait(FAIL_FAST_S + 30)
    return code, log.read_text(errors="replace"), time.monotonic() - started


def _one_line_exit_2(code: int, output: str, seconds: float, *expected: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert code == 2, output[-3000:]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    assert PASSWORD not in output
    assert seconds < FAIL_FAST_S, f"took {seconds:.1f}s"
    return errors[0]


def test_a_wrong_password_stops_the_dispatcher_at_start(sasl_kafka: Secured, redis_server: RedisServer, tmp_path: Path) -> None:
    settings = sasl_kafka.settings(redis_server.url, ["T-any"], "file:///dev/null", kafka_sasl_password="not-the-password")
    refusals = sasl_kafka.front.refusals if sasl_kafka.front else 0
    code, output, seconds = _start("dispatcher", settings, tmp_path / "d.log")
    _one_line_exit_2(code, output, seconds, f"kafka at {sasl_kafka.bootstrap} refused the credentials", "SaslAuthenticationFailed")
    assert "not-the-password" not in output
    assert sasl_kafka.front is not None and sasl_kafka.front.refusals > refusals


def test_a_wrong_password_stops_a_kafka_uploading_aggregator(
    sasl_ssl_kafka: Secured, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = sasl_ssl_kafka.settings(redis_server.url, ["T-any"], "kafka://T-out", kafka_sasl_username="nobody")
    code, output, seconds = _start("aggregator", settings, tmp_path / "a.log")
    _one_line_exit_2(code, output, seconds, "refused the credentials")


def test_tansu_refusing_the_login_stops_the_dispatcher(
    tansu_authentication: Secured, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A real broker's refusal: tansu answers the SCRAM exchange with an error (e=unknown-user)."""
    settings = tansu_authentication.settings(redis_server.url, ["T-any"], "file:///dev/null")
    code, output, seconds = _start("dispatcher", settings, tmp_path / "d.log")
    _one_line_exit_2(code, output, seconds, "BATCHFLEET_KAFKA_SASL_PASSWORD", "refused the credentials")


def test_an_untrusted_broker_certificate_stops_the_dispatcher(
    tls_kafka: Secured, pki: Pki, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = tls_kafka.settings(redis_server.url, ["T-any"], "file:///dev/null", kafka_ssl_cafile=pki.other_ca)
    code, output, seconds = _start("dispatcher", settings, tmp_path / "d.log")
    _one_line_exit_2(code, output, seconds, f"TLS with kafka at {tls_kafka.bootstrap} failed", "certificate verify failed")


def test_mutual_tls_without_a_client_certificate_stops_the_dispatcher(
    mtls_kafka: Secured, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = mtls_kafka.settings(redis_server.url, ["T-any"], "file:///dev/null", kafka_ssl_certfile=None, kafka_ssl_keyfile=None)
    code, output, seconds = _start("dispatcher", settings, tmp_path / "d.log")
    _one_line_exit_2(code, output, seconds, f"TLS with kafka at {mtls_kafka.bootstrap} failed")


def test_mutual_tls_with_a_certificate_of_another_ca_stops_the_dispatcher(
    mtls_kafka: Secured, pki: Pki, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = mtls_kafka.settings(
        redis_server.url,
        ["T-any"],
        "file:///dev/null",
        kafka_ssl_certfile=pki.other_server_cert,
        kafka_ssl_keyfile=pki.other_server_key,
    )
    code, output, seconds = _start("dispatcher", settings, tmp_path / "d.log")
    _one_line_exit_2(code, output, seconds, "TLS with kafka")


async def test_redispatch_with_a_wrong_password_exits_2(
    sasl_kafka: Secured, redis_server: RedisServer, store: BatchStore, tmp_path: Path
) -> None:
    """The CLI's Kafka client: a quarantined message re-dispatched with refused credentials."""
    entry = QuarantineEntry(topic="T-q", partition=0, offset=0, reason="bad", value=b"{}", size=2, advance_offset=True)
    await store.quarantine(entry, retention_s=60, max_entries=10)
    settings = sasl_kafka.settings(redis_server.url, ["T-q"], "file:///dev/null", kafka_sasl_password="wrong")
    started = time.monotonic()
    done = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "batchfleet", "inspect", "quarantine", "--redispatch", "T-q:0:0"],
        env=settings_env(settings),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(done.communicate(), FAIL_FAST_S + 30)
    _one_line_exit_2(done.returncode or 0, output.decode(), time.monotonic() - started, "refused the credentials")


# -- waited for, with the reason ---------------------------------------------------------------------
async def test_an_unresolvable_host_is_waited_for_and_named(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = make_settings(redis_server.url, "kafka-host-that-does-not-exist.invalid:9092", ["T-any"], "file:///dev/null")
    log = tmp_path / "d.log"
    proc = RoleProcess("dispatcher", settings_env(settings), log)
    try:

        async def named() -> bool:
            return "kafka host kafka-host-that-does-not-exist.invalid does not resolve" in log.read_text(errors="replace")

        await wait_until(named, 30, "the warning that the host does not resolve")
        assert proc.alive(), log.read_text()  # waiting, not exiting
    finally:
        code = proc.stop()
    assert code == 0, log.read_text()


async def test_a_topic_that_does_not_exist_is_named(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Named before the dispatcher subscribes: a broker that creates topics when a consumer asks for
    them (tansu does; Kafka with auto.create.topics.enable) would otherwise create the misspelt one
    without a word."""
    missing = f"{topic_name}-misspelt"
    await create_topics(broker.bootstrap, [topic_name])
    settings = make_settings(redis_server.url, broker.bootstrap, [topic_name, missing], "file:///dev/null")
    caplog.set_level(logging.INFO, logger="batchfleet.dispatcher.service")
    dispatcher = Dispatcher(settings, store, name="d-topics")
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:

        async def consuming() -> bool:
            return any(" as group " in r.getMessage() for r in caplog.records)

        await wait_until(consuming, 30, "the dispatcher consuming")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    lines = [r.getMessage() for r in caplog.records]
    warned = [i for i, line in enumerate(lines) if f"topic {missing} does not exist (yet)" in line]
    started = [i for i, line in enumerate(lines) if " as group " in line]  # "NAME consuming TOPICS as group G"
    assert warned and warned[0] < started[0], lines
    assert not any(f"topic {topic_name} does not exist" in line for line in lines), lines


@pytest.mark.slow
async def test_tls_against_a_plaintext_listener_is_waited_for_with_a_hint(
    broker: KafkaBroker, pki: Pki, redis_server: RedisServer, tmp_path: Path
) -> None:
    """BATCHFLEET_KAFKA_SECURITY_PROTOCOL=SSL against a port that speaks plain Kafka: the broker waits
    for the rest of a request that never comes, so the handshake times out like a slow network would;
    the wait says what it may be."""
    security = {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": pki.ca}
    settings = make_settings(redis_server.url, broker.bootstrap, ["T-any"], "file:///dev/null", **security)
    log = tmp_path / "d.log"
    proc = RoleProcess("dispatcher", settings_env(settings), log)
    try:

        async def hinted() -> bool:
            return "is it a TLS listener?" in log.read_text(errors="replace")

        await wait_until(hinted, 40, "the hint that the listener may not speak TLS")
        assert proc.alive(), log.read_text()
    finally:
        code = proc.stop()
    assert code == 0, log.read_text()
