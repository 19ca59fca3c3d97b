"""Settings, built once at the edge and passed down.

Environment variables carry the prefix ``BATCHFLEET_``; CLI flags override them.  Per-topic
overrides live in a TOML file (``BATCHFLEET_CONFIG``) as ``[topics."TOPIC-NAME"]`` tables, because
topic names contain ``-``.  Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from batchfleet.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "PriorityLevel",
    "Settings",
    "TopicConfig",
    "kafka_security_problem",
    "load_settings",
    "setting_variables",
    "url_problem",
]

ENV_PREFIX = "BATCHFLEET_"
MIN_WEB_TOKEN_CHARS = 20


def url_problem(url: str) -> str | None:
    """What is wrong with a URL that may carry a password, without echoing any of it (None: nothing)."""
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc and "@" in url[len(parts.scheme) + 3 :]:
            return "the password part looks unencoded ('#', '/', '?' must be percent-encoded)"
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return "not a valid URL: the port is not a number, or the user or password part holds an unencoded ':', '[' or ']'"
    return None


Batching = Literal["poll", "message"]
LatePolicy = Literal["drop", "record"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class PriorityLevel(BaseModel):
    """What a priority level changes: the batch deadline, and how far its station jobs jump the queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(gt=0, le=86_400)
    boost_s: float = Field(default=0.0, ge=0, le=3600)


class TopicConfig(BaseModel):
    """Everything that shapes one topic's batches.  Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batching: Batching = "poll"
    timeout_s: float = Field(default=5.0, gt=0, le=86_400)
    retention_s: int = Field(default=300, ge=1)
    station_list_field: str = "stationData"
    station_id_field: str = "stationId"
    max_stations: int = Field(default=20_000, ge=1)
    late: LatePolicy = "drop"
    quorum: float | None = Field(default=None, gt=0, le=1)
    quorum_grace_s: float = Field(default=0.0, ge=0)
    priority_field: str | None = None
    priority_header: str = "priority"
    default_priority: str = "normal"
    priorities: dict[str, PriorityLevel] = Field(default_factory=dict)

    def level(self, name: str | None) -> tuple[str, float, float]:
        """(level, deadline s, queue boost s) of a priority name; unknown names get the default level."""
        chosen = name if name in self.priorities else self.default_priority
        spec = self.priorities.get(chosen)
        if spec is None:
            return chosen, self.timeout_s, 0.0
        return chosen, spec.timeout_s, spec.boost_s


# TopicConfig fields whose global default has a different name in Settings (the rest share names).
_GLOBAL_NAME = {"timeout_s": "batch_timeout_s", "max_stations": "max_stations_per_batch"}


class Settings(BaseSettings):
    """Fleet-wide settings.  Every field has an environment twin ``BATCHFLEET_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_tls_ca_file: Path | None = None  # CA bundle for rediss:// servers with a private CA
    redis_cluster: bool = False  # redis_url names any one node of a Redis Cluster
    redis_socket_timeout_s: float = Field(default=5.0, ge=1)  # no reply this long: drop the connection (a cut link)
    # Sentinel: "host:port,host:port" of the Sentinels and the master name they monitor; every role
    # then asks them for the current primary (redis_url still gives user, password, db and scheme)
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = ""
    # durability knob: after each ingest write the dispatcher runs WAIT N TIMEOUT on the same connection
    ingest_wait_replicas: int = Field(default=0, ge=0)
    ingest_wait_timeout_ms: int = Field(default=500, ge=1)
    # upload safety: before uploading, the aggregator WAITs until N replicas hold the frozen body (and
    # everything written before it; on a cluster, on the batch's primary); None = 1 with Sentinel, else 0
    upload_wait_replicas: int | None = Field(default=None, ge=0)
    upload_wait_timeout_ms: int = Field(default=500, ge=1)
    key_prefix: str = Field(default="bf", pattern=r"^[A-Za-z0-9_.-]+$")
    shards: int = Field(default=1, ge=1, le=1024)  # hash-tagged shards of the keyspace (see README "Shards")

    kafka_bootstrap_servers: str = "localhost:9092"
    topics: Annotated[list[str], NoDecode] = Field(default_factory=list)
    kafka_group_id: str = "batchfleet"
    poll_timeout_ms: int = Field(default=1000, ge=1)
    poll_max_records: int = Field(default=500, ge=1)
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    kafka_request_timeout_ms: int = Field(default=15_000, ge=11_000)  # > the 10 s a JoinGroup may wait
    max_message_bytes: int = Field(default=1_048_576, ge=64)
    max_open_batches: int = Field(default=1000, ge=1)
    # Kafka security, named after aiokafka's parameters (README "Kafka security", docs/deploy.md)
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None  # CA bundle of the brokers' certificates (default: the system's)
    kafka_ssl_certfile: Path | None = None  # client certificate (mutual TLS), with kafka_ssl_keyfile
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None  # when kafka_ssl_keyfile is encrypted

    processor: str = ""  # required by the worker: module:function
    station_timeout_s: float | None = Field(default=None, gt=0)
    max_result_bytes: int = Field(default=1_048_576, ge=16)
    stations_per_job: int = Field(default=100, ge=1, le=10_000)
    worker_max_jobs: int = Field(default=50, ge=1)
    worker_poll_delay_s: float = Field(default=0.05, gt=0)
    worker_grace_s: int = Field(default=10, ge=0)
    worker_processes: int | Literal["auto"] = 1  # worker processes of one `batchfleet worker` ("auto": the host's cores)
    worker_concurrency: int = Field(default=0, ge=0)  # processor calls a worker process runs at once (0: no limit)

    uploader: str = ""
    upload_auth_header: SecretStr | None = None
    upload_timeout_s: float = Field(default=10.0, gt=0)
    upload_max_attempts: int = Field(default=8, ge=1)
    upload_backoff_base_s: float = Field(default=0.5, gt=0)
    upload_backoff_max_s: float = Field(default=60.0, gt=0)
    lease_s: float = Field(default=30.0, gt=0)
    aggregator_concurrency: int = Field(default=16, ge=1)

    batch_timeout_s: float = Field(default=5.0, gt=0, le=86_400)
    retention_s: int = Field(default=300, ge=1)
    batching: Batching = "poll"
    late: LatePolicy = "drop"
    station_list_field: str = "stationData"
    station_id_field: str = "stationId"
    max_stations_per_batch: int = Field(default=20_000, ge=1)
    quorum: float | None = Field(default=None, gt=0, le=1)
    quorum_grace_s: float = Field(default=0.0, ge=0)
    priority_field: str | None = None
    priority_header: str = "priority"
    default_priority: str = "normal"
    priorities: dict[str, PriorityLevel] = Field(default_factory=dict)

    config: Path | None = None
    topic_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)

    # web console (`batchfleet web`): read-only unless a token is set; every action needs the token
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=1, le=65535)
    web_token: SecretStr | None = None
    web_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)  # Host names besides loopback
    web_secure_cookies: bool = False  # mark the session cookie Secure even over http (behind a TLS-terminating proxy)

    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # where /metrics listens (0.0.0.0 only inside a container, never published)
    log_format: Literal["human", "json"] = "human"
    log_level: str = "INFO"

    @field_validator("topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("web_allowed_hosts", "redis_sentinels", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        return cls._split_topics(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{address!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _sentinel_complete(self) -> Settings:
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError("BATCHFLEET_REDIS_SENTINELS and BATCHFLEET_REDIS_SENTINEL_MASTER go together: set both or neither")
        if self.redis_sentinels and self.redis_cluster:
            raise ValueError("BATCHFLEET_REDIS_SENTINELS and BATCHFLEET_REDIS_CLUSTER exclude each other")
        if self.ingest_wait_replicas and self.redis_cluster:
            raise ValueError("BATCHFLEET_INGEST_WAIT_REPLICAS is for a single Redis or Sentinel, not BATCHFLEET_REDIS_CLUSTER")
        return self

    def upload_wait(self) -> tuple[int, int] | None:
        """(replicas, timeout ms) the aggregator WAITs for after freezing a batch's body, or None."""
        replicas = self.upload_wait_replicas
        if replicas is None:
            replicas = 1 if self.redis_sentinels else 0
        return (replicas, self.upload_wait_timeout_ms) if replicas else None

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each Sentinel; empty when the fleet does not use Sentinel."""
        return [(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in self.redis_sentinels]

    @field_validator("web_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("web_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < MIN_WEB_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_WEB_TOKEN_CHARS} characters, not blank (e.g. openssl rand -base64 24)")
        return value

    @field_validator("upload_auth_header")
    @classmethod
    def _header_value(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else ""
        if any(not 32 <= ord(c) < 127 and c != "\t" for c in text):  # the HTTP client would echo it in its error
            raise ValueError("holds a control or non-ASCII character (a CR from a Windows line end?)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_shape(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        problem = url_problem(url)
        if not url.startswith(("redis://", "rediss://", "unix://")):
            problem = "must start with redis://, rediss:// or unix://"
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("worker_processes")
    @classmethod
    def _positive_processes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("expected a number of processes >= 1, or auto")
        return value

    def worker_process_count(self) -> int:
        """Worker processes of one ``batchfleet worker``: BATCHFLEET_WORKER_PROCESSES, auto = the host's cores."""
        return (os.cpu_count() or 1) if self.worker_processes == "auto" else int(self.worker_processes)

    def redis_location(self) -> str:
        """``host:port/db`` of the Redis URL, without credentials (for log lines and messages)."""
        parts = urlsplit(self.redis_url.get_secret_value())
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path}"

    def topic(self, name: str) -> TopicConfig:
        """The effective configuration of one topic: global defaults, then its TOML table."""
        base: dict[str, Any] = {field: getattr(self, _GLOBAL_NAME.get(field, field)) for field in TopicConfig.model_fields}
        base.update(self.topic_overrides.get(name, {}))
        return TopicConfig(**base)

    def longest_station_budget_s(self) -> float:
        """The longest time any station may run: the explicit station timeout, else the longest batch
        deadline of any topic or priority level (arq's own job timeout must sit above it)."""
        if self.station_timeout_s is not None:
            return self.station_timeout_s
        topics = [self.topic(name) for name in self.topic_overrides] + [self.topic("")]
        return max(
            t.timeout_s if not t.priorities else max(t.timeout_s, *(p.timeout_s for p in t.priorities.values())) for t in topics
        )

    def as_env(self) -> dict[str, str]:
        """These settings as ``BATCHFLEET_*`` variables (for starting role processes with them);
        secrets are included in clear, so never log the result."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json", exclude={"topic_overrides"}).items():
            if value is None:
                continue
            if name in _SECRET_FIELDS:
                secret = getattr(self, name)
                value = secret.get_secret_value() if secret is not None else None
            elif name in ("topics", "web_allowed_hosts", "redis_sentinels"):
                value = ",".join(value)
            elif isinstance(value, dict | list):
                value = json.dumps(value)
            env[f"BATCHFLEET_{name.upper()}"] = str(value)
        return env


def _read_topic_tables(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = set(data) - {"topics"}
    if unknown:
        raise ConfigError(f'config file {path}: unknown top-level key(s) {sorted(unknown)}; expected [topics."NAME"]')
    tables = data.get("topics", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"config file {path}: 'topics' must be a table of tables")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: topics.{name!r} must be a table")
        try:
            TopicConfig(**table)
        except ValidationError as exc:
            problems = "; ".join(f"topics.{name!r}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"config file {path}: {problems}") from exc
    return tables


_INTERNAL_FIELDS = {"topic_overrides"}  # filled from the TOML file, not a setting of its own
# every SecretStr setting: never echoed in an error, passed on in clear by as_env() only
_SECRET_FIELDS = {name for name, f in Settings.model_fields.items() if SecretStr in (f.annotation, *get_args(f.annotation))}


def setting_variables() -> dict[str, str]:
    """``BATCHFLEET_<NAME>`` -> field name, for every setting."""
    return {f"{ENV_PREFIX}{name.upper()}": name for name in Settings.model_fields if name not in _INTERNAL_FIELDS}


def _refuse_unknown_variables(environ: Mapping[str, str]) -> None:
    """A ``BATCHFLEET_*`` variable that is no setting is almost always a typo that would otherwise be
    ignored without a word (and leave a default in force): refuse to start, naming the closest setting."""
    known = setting_variables()
    suffixes = [name[len(ENV_PREFIX) :] for name in known]
    problems = []
    for name in sorted(n for n in environ if n.upper().startswith(ENV_PREFIX) and n.upper() not in known):
        close = difflib.get_close_matches(name.upper()[len(ENV_PREFIX) :], suffixes, n=1, cutoff=0.6)
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        problems.append(f"{name}{hint}")
    if problems:
        raise ConfigError(f"unknown setting {', '.join(problems)}; every setting is listed in compose/.env.example")


def _variable(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _explain(exc: ValidationError) -> str:
    """One line naming each bad variable, its value (unless secret) and the expected form."""
    parts = []
    for error in exc.errors():
        field, *inner = [str(part) for part in error["loc"]] or ["?"]
        where = _variable(field) + (f" ({'.'.join(inner)})" if inner else "")
        # a model-level error's input is the whole settings input: never shown (it holds the secrets)
        hidden = field in _SECRET_FIELDS or not error["loc"] or error["type"] == "missing"
        value = "" if hidden else f"={error.get('input')!r}"
        where = where if error["loc"] else "settings"
        parts.append(f"{where}{value}: {error['msg']}")
    return "; ".join(parts)


def _settings(given: dict[str, Any]) -> Settings:
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from exc
    except SettingsError as exc:  # a structured value (JSON) that does not parse
        match = re.search(r'field "([^"]+)"', str(exc))
        field = match.group(1) if match else "?"
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"{_variable(field)} is not valid JSON{cause} (expected e.g. {_JSON_EXAMPLE.get(field, '{}')})") from exc


_JSON_EXAMPLE = {"priorities": '{"high": {"timeout_s": 3, "boost_s": 60}}'}


def kafka_security_problem(s: Settings) -> str | None:
    """What is wrong with the combination of Kafka security settings (one line), or None.  Whether the
    files exist is checked where the clients are built (only the roles that talk to Kafka need them)."""
    sasl = s.kafka_security_protocol.startswith("SASL_")
    tls = s.kafka_security_protocol in ("SSL", "SASL_SSL")
    protocol = f"BATCHFLEET_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol}"
    sasl_given = [f for f in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password") if getattr(s, f) is not None]
    tls_fields = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")
    tls_given = [f for f in tls_fields if getattr(s, f)]
    if not sasl and sasl_given:
        return f"{_variable(sasl_given[0])} is set, but {protocol} does not use SASL (SASL_SSL or SASL_PLAINTEXT does)"
    if not tls and tls_given:
        return f"{_variable(tls_given[0])} is set, but {protocol} does not use TLS (SSL or SASL_SSL does)"
    missing = [f for f in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password") if sasl and not getattr(s, f)]
    if missing:
        return f"{protocol} needs {', '.join(map(_variable, missing))}"
    if bool(s.kafka_ssl_certfile) != bool(s.kafka_ssl_keyfile):
        return "BATCHFLEET_KAFKA_SSL_CERTFILE and BATCHFLEET_KAFKA_SSL_KEYFILE go together (mutual TLS): set both or neither"
    if s.kafka_ssl_key_password and not s.kafka_ssl_keyfile:
        return "BATCHFLEET_KAFKA_SSL_KEY_PASSWORD is set without BATCHFLEET_KAFKA_SSL_KEYFILE"
    return None


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, CLI overrides (``None`` means "not given") and the TOML file.

    Every problem is a ConfigError whose one-line message names the variable (or TOML key) and the
    expected form; unknown ``BATCHFLEET_*`` variables are refused."""
    _refuse_unknown_variables(os.environ)
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = _settings(given)
    kafka_problem = kafka_security_problem(settings)
    if kafka_problem:
        raise ConfigError(kafka_problem)
    if settings.config is not None:
        settings = settings.model_copy(update={"topic_overrides": _read_topic_tables(settings.config)})
        for name in settings.topic_overrides:
            settings.topic(name)  # validate the merged view once, at start-up
    return settings
