"""Kafka security settings: which combinations start, the aiokafka arguments every client gets, and
which connection failures are a misconfiguration (exit 2) rather than an outage (retried)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from batchfleet.errors import ConfigError
from batchfleet.kafka import client_options, kafka_config_error
from batchfleet.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def problem(**given: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**given)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert client_options(Settings(kafka_bootstrap_servers="k:9092")) == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs BATCHFLEET_KAFKA_SASL_MECHANISM, BATCHFLEET_KAFKA_SASL_USERNAME"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_password": "pw"},
            "SASL_PLAINTEXT needs BATCHFLEET_KAFKA_SASL_USERNAME",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u"},
            "needs BATCHFLEET_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_sasl_username": "u"}, "BATCHFLEET_KAFKA_SASL_USERNAME is set, but BATCHFLEET_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_ssl_cafile": "/ca.pem"},
            "BATCHFLEET_KAFKA_SSL_CAFILE is set, but BATCHFLEET_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS",
        ),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"}, "KEYFILE go together"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/k.pem"}, "KEYFILE go together"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_key_password": "x"}, "KEY_PASSWORD is set without"),
        ({"kafka_security_protocol": "TLS"}, "BATCHFLEET_KAFKA_SECURITY_PROTOCOL='TLS'"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"}, "BATCHFLEET_KAFKA_SASL_MECHANISM='GSSAPI'"),
    ],
)
def test_bad_combinations_are_one_line(given: dict[str, Any], expected: str) -> None:
    assert expected in problem(**given)


def test_the_password_is_never_in_an_error() -> None:
    message = problem(kafka_sasl_password="canary-Kafka-pw", kafka_sasl_username="u")
    assert "canary" not in message
    message = problem(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SHA1", kafka_sasl_password="canary-Kafka-pw")
    assert "canary" not in message


def test_sasl_options() -> None:
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="fleet",
        kafka_sasl_password="pw",
    )
    options = client_options(s)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("fleet", "pw")
    assert "ssl_context" not in options
    assert "pw" not in repr(s)


def _make_cert(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=test", "-days", "1"]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_ssl_options_build_one_context_with_the_client_certificate(tmp_path: Path) -> None:
    cert, key = _make_cert(tmp_path)
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="key",
        kafka_sasl_password="secret",
        kafka_ssl_cafile=cert,
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
    )
    context = client_options(s)["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1


def test_ssl_without_a_ca_uses_the_systems() -> None:
    context = client_options(Settings(kafka_security_protocol="SSL"))["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED


def test_missing_or_unloadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"BATCHFLEET_KAFKA_SSL_CAFILE='/nonexistent/ca.pem': no such file"):
        client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=Path("/nonexistent/ca.pem")))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="does not load"):
        client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=junk))
    cert, key = _make_cert(tmp_path)
    with pytest.raises(ConfigError, match="does not load"):
        client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=key, kafka_ssl_keyfile=cert))


def test_refusals_are_configuration_and_outages_are_not() -> None:
    refused = kafka_config_error(SaslAuthenticationFailed("Authentication failed"), "k:9093")
    assert refused is not None and "refused the credentials" in str(refused)
    assert kafka_config_error(KeyError("v"), "k:9093") is not None  # a SCRAM error reply ("e=...")
    assert kafka_config_error(KeyError("v"), "k:9093", sasl=False) is None  # without SASL, not a refusal
    try:
        raise KafkaConnectionError("cannot connect") from ssl.SSLCertVerificationError(1, "certificate verify failed")
    except KafkaConnectionError as exc:
        untrusted = kafka_config_error(exc, "k:9093")
    assert untrusted is not None and "TLS with kafka at k:9093 failed" in str(untrusted)
    direct = kafka_config_error(ssl.SSLCertVerificationError(1, "certificate verify failed"), "k:9093")  # also a ValueError
    assert direct is not None and "TLS with kafka" in str(direct)
    assert kafka_config_error(KafkaConnectionError("Connection refused"), "k:9093") is None
    assert kafka_config_error(TimeoutError(), "k:9093") is None


def test_a_bad_combination_exits_2_in_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "BATCHFLEET_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "BATCHFLEET_TOPICS": "t"}
    done = subprocess.run([sys.executable, "-m", "batchfleet", "dispatcher"], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "needs BATCHFLEET_KAFKA_SASL_MECHANISM" in done.stderr


def test_an_encrypted_key_loads_with_its_password_only(tmp_path: Path) -> None:
    cert, key = _make_cert(tmp_path)
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:key-pw", "-out", str(encrypted)],
        check=True,
        capture_output=True,
    )
    given = {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": cert, "kafka_ssl_keyfile": encrypted}
    assert isinstance(client_options(Settings(**given, kafka_ssl_key_password="key-pw"))["ssl_context"], ssl.SSLContext)
    with pytest.raises(ConfigError, match="KEY_PASSWORD is wrong") as info:
        client_options(Settings(**given, kafka_ssl_key_password="not-key-pw"))
    assert "not-key-pw" not in str(info.value)
    with pytest.raises(ConfigError, match="KEY_PASSWORD is wrong"):  # no password: an error, not a prompt
        client_options(Settings(**given))
