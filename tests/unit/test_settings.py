"""Per-topic configuration: defaults from global settings, overrides from TOML, fail fast on bad keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batchfleet.errors import ConfigError
from batchfleet.settings import Settings, load_settings, setting_variables

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topics.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_topic_inherits_globals_and_applies_overrides(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
[topics."SCHEDULE-STATION-REALTIME-DATA"]
batching = "message"
timeout_s = 2.5
quorum = 0.8
quorum_grace_s = 0.5
late = "record"
station_list_field = "data"
max_stations = 100
retention_s = 60
priority_field = "prio"
[topics."SCHEDULE-STATION-REALTIME-DATA".priorities.high]
timeout_s = 1.0
boost_s = 30
""",
    )
    s = load_settings(config=str(cfg), batch_timeout_s=7.0, redis_url="redis://x:1/0")
    t = s.topic("SCHEDULE-STATION-REALTIME-DATA")
    assert (t.batching, t.timeout_s, t.quorum, t.quorum_grace_s, t.late) == ("message", 2.5, 0.8, 0.5, "record")
    assert (t.station_list_field, t.max_stations, t.retention_s, t.priority_field) == ("data", 100, 60, "prio")
    assert t.level("high") == ("high", 1.0, 30.0)
    assert t.level("unknown") == ("normal", 2.5, 0.0)  # unknown names get the default level
    other = s.topic("OTHER-TOPIC")
    assert (other.batching, other.timeout_s, other.quorum) == ("poll", 7.0, None)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[topics."A-B"]\ntimeout = 3\n', "timeout"),
        ('[topics."A-B"]\nbatching = "sometimes"\n', "batching"),
        ('[topics."A-B"]\nquorum = 1.5\n', "quorum"),
        ('[topics."A-B".priorities.high]\ntimeout_s = 1\nboost = 3\n', "boost"),
        ('[topic."A-B"]\ntimeout_s = 3\n', "topic"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(config=str(write(tmp_path, text)))


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "batchfleet", *args],
        cwd=REPO,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line_config_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_dispatcher_refuses_to_start_with_a_bad_config(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[topics."A-B"]\nbatchng = "poll"\n')
    line = _one_line_config_error(_run("dispatcher", "--config", str(cfg), "--topics", "A-B"))
    assert "batchng" in line


def test_every_role_refuses_an_unknown_variable_naming_the_closest_setting() -> None:
    for role in ("dispatcher", "worker", "aggregator", "status"):
        line = _one_line_config_error(_run(role, env={"BATCHFLEET_PROCESOR": "x:y"}))
        assert "unknown setting BATCHFLEET_PROCESOR (did you mean BATCHFLEET_PROCESSOR?)" in line, line


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("BATCHFLEET_BATCH_TIMEOUT_S", "abc", "BATCHFLEET_BATCH_TIMEOUT_S='abc': Input should be a valid number"),
        ("BATCHFLEET_BATCHING", "sometimes", "BATCHFLEET_BATCHING='sometimes': Input should be 'poll' or 'message'"),
        ("BATCHFLEET_WORKER_MAX_JOBS", "0", "BATCHFLEET_WORKER_MAX_JOBS='0': Input should be greater than or equal to 1"),
        (
            "BATCHFLEET_PRIORITIES",
            "high",
            'BATCHFLEET_PRIORITIES is not valid JSON: Expecting value: line 1 column 1 (char 0) (expected e.g. {"high"',
        ),
        ("BATCHFLEET_PRIORITIES", '{"high": {"timeout": 1}}', "BATCHFLEET_PRIORITIES (high.timeout_s): Field required"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_value_through_the_cli_exits_2_without_a_traceback() -> None:
    line = _one_line_config_error(_run("aggregator", env={"BATCHFLEET_UPLOAD_TIMEOUT_S": "-1", "BATCHFLEET_UPLOADER": "file:///x"}))
    assert "BATCHFLEET_UPLOAD_TIMEOUT_S='-1': Input should be greater than 0" in line


def test_a_secret_value_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLEET_UPLOAD_AUTH_HEADER", "")
    monkeypatch.setenv("BATCHFLEET_REDIS_URL", "redis://u:hunter2@h:1/0")
    monkeypatch.setenv("BATCHFLEET_KEY_PREFIX", "bad prefix")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value) and "BATCHFLEET_KEY_PREFIX" in str(caught.value)


def test_the_processor_is_required_and_checked_when_loaded() -> None:
    from batchfleet.errors import ProcessorLoadError
    from batchfleet.workers.processor import load_processor

    cases = {
        "": "BATCHFLEET_PROCESSOR is not set",
        "tests.integration.processors": "is a module: name the function too, as tests.integration.processors:FUNCTION",
        "tests.integration.processors:nothing": "module 'tests.integration.processors' has no attribute 'nothing'",
        "tests.integration.processors.nothing": "module 'tests.integration.processors' has no attribute 'nothing'",
        "no_such_module_xyz:f": "cannot import 'no_such_module_xyz'",
        "tests.integration.processors:release": "is a Event, not a function",
        "batchfleet.settings:load_settings": "is called as process(station_id, records)",
        "tests.integration.processors:_result": None,
        "tests.integration.processors:async_process": None,
        "tests.integration.processors.sync_process": None,
    }
    for ref, said in cases.items():
        if said is None:
            assert callable(load_processor(ref))
            continue
        with pytest.raises(ProcessorLoadError) as caught:
            load_processor(ref)
        message = str(caught.value)
        assert message.startswith("BATCHFLEET_PROCESSOR") and said in message, (ref, message)


def test_a_worker_without_a_usable_processor_exits_2_at_once() -> None:
    line = _one_line_config_error(_run("worker", env={"BATCHFLEET_REDIS_URL": "redis://127.0.0.1:1/0"}))
    assert "BATCHFLEET_PROCESSOR is not set" in line
    line = _one_line_config_error(_run("worker", env={"BATCHFLEET_PROCESSOR": "batchfleet.settings:load_settings"}))
    assert "process(station_id, records)" in line


def _readme_settings_table() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| variable | meaning | default |") :].split("\n\n", 1)[0]
    return set(re.findall(r"`(BATCHFLEET_[A-Z0-9_]+)`", table))


def _env_example_settings() -> set[str]:
    text = (REPO / "compose" / ".env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^#?\s*(BATCHFLEET_[A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_env_example_and_the_readme_list_every_setting_and_nothing_else() -> None:
    settings = set(setting_variables())
    assert len(settings) == len(Settings.model_fields) - 1  # all but topic_overrides, filled from the TOML file
    for where, listed in (("compose/.env.example", _env_example_settings()), ("README settings table", _readme_settings_table())):
        assert not settings - listed, f"{where} misses {sorted(settings - listed)}"
        assert not listed - settings, f"{where} lists {sorted(listed - settings)}, which are no settings"


def test_secret_redis_url_is_masked() -> None:
    s = Settings(redis_url="redis://u:hunter2@h:6379/0")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())


def test_errors_never_echo_a_secret() -> None:
    """A model-level error (its pydantic input is every setting) and field errors of secret settings
    name the variable and the problem only; every SecretStr setting is treated as secret."""
    from batchfleet.errors import ConfigError
    from batchfleet.settings import _SECRET_FIELDS

    assert {"redis_url", "upload_auth_header", "web_token"} <= _SECRET_FIELDS
    secrets = {
        "redis_url": "redis://:hunter2-pw@h:1/0",
        "web_token": "hunter2-token-hunter2-token",
        "upload_auth_header": "hunter2",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_sentinels="h:1", **secrets)
    assert "hunter2" not in str(caught.value) and str(caught.value).startswith("settings: ")
    for bad in ("redis://:hunter2#x@h:6379/0", "redis://:hunter2/x@h:1/0", "redis://:hunter2?x@h/0", "redis://h:hunter2/0"):
        with pytest.raises(ConfigError) as caught:
            load_settings(**(secrets | {"redis_url": bad}))
        assert "hunter2" not in str(caught.value) and "BATCHFLEET_REDIS_URL" in str(caught.value)
    with pytest.raises(ConfigError, match="looks unencoded"):
        load_settings(redis_url="redis://:pa#ss@h:6379/0")
    with pytest.raises(ConfigError, match="redis://, rediss:// or unix://"):
        load_settings(redis_url="http://h:1/0")
    assert Settings(redis_url="redis://:p%23ss@h:6379/0").redis_location() == "h:6379/0"  # encoded: fine
    assert Settings(redis_url="unix:///tmp/r.sock?db=1").redis_location() == "/tmp/r.sock"


def test_an_upload_auth_header_must_be_a_valid_header_value() -> None:
    """httpx refuses a CR, LF or NUL in a header and names the whole value in its error: refused at start."""
    from batchfleet.errors import ConfigError

    for bad in ("Bearer hunter2\r", "Bearer hunter2\nX: 1", "Bearer hunter2\x00", "Bearer hünter2"):
        with pytest.raises(ConfigError, match=r"BATCHFLEET_UPLOAD_AUTH_HEADER: .*control or non-ASCII") as caught:
            load_settings(upload_auth_header=bad)
        assert "hunter2" not in str(caught.value) and "nter2" not in str(caught.value)
    assert Settings(upload_auth_header="X-Api-Key: a\tb").upload_auth_header is not None


def test_a_web_token_must_be_long_and_not_blank() -> None:
    from batchfleet.errors import ConfigError

    for bad in ("x" * 19, " " * 40, "  short-but-padded  "):
        with pytest.raises(ConfigError, match=r"BATCHFLEET_WEB_TOKEN: .*at least 20 characters") as caught:
            load_settings(web_token=bad)
        assert bad not in str(caught.value)
    assert Settings(web_token="x" * 20).web_token is not None and Settings(web_token="").web_token is None


def test_as_env_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchfleet.settings import PriorityLevel

    s = Settings(
        redis_url="redis://u:pw@h:1/0",
        topics=["A-B", "C-D"],
        quorum=0.5,
        metrics_port=9400,
        priorities={"high": PriorityLevel(timeout_s=2.0, boost_s=5.0)},
        upload_auth_header="Bearer t",
        web_token="a-console-token-of-24ch",
    )
    for name, value in s.as_env().items():
        monkeypatch.setenv(name, value)
    again = load_settings()
    assert again.model_dump(exclude={"redis_url", "upload_auth_header", "web_token"}) == s.model_dump(
        exclude={"redis_url", "upload_auth_header", "web_token"}
    )
    assert again.web_token is not None and again.web_token.get_secret_value() == "a-console-token-of-24ch"
    assert again.redis_url.get_secret_value() == "redis://u:pw@h:1/0"
    assert again.upload_auth_header is not None and again.upload_auth_header.get_secret_value() == "Bearer t"


def test_arq_job_timeout_covers_the_longest_topic_and_priority_deadline(tmp_path: Path) -> None:
    """A topic (or priority level) whose deadline is longer than the global one must not have its
    stations cut off by arq's own job timeout before the station budget ends."""
    from batchfleet.workers.settings import JOB_TIMEOUT_EXTRA_S, worker_settings

    cfg = write(tmp_path, '[topics."SLOW-TOPIC"]\ntimeout_s = 40\n[topics."P-TOPIC".priorities.low]\ntimeout_s = 90\n')
    s = load_settings(config=str(cfg), batch_timeout_s=5.0, redis_url="redis://127.0.0.1:1/0")
    assert s.longest_station_budget_s() == 90
    functions = worker_settings(s)["functions"]
    assert sorted(f.name for f in functions) == ["run_group", "run_station"]  # groups, and one-station jobs
    assert all(f.timeout_s == 90 + JOB_TIMEOUT_EXTRA_S for f in functions)
    assert load_settings(station_timeout_s=3.0).longest_station_budget_s() == 3.0
    for field in ("late", "quorum", "priorities", "retention_s", "station_id_field"):  # every field inherits
        assert getattr(load_settings(config=str(cfg)).topic("OTHER"), field) == getattr(load_settings(config=str(cfg)), field)


def test_sentinel_settings_go_together_and_reach_arq() -> None:
    import pydantic

    from batchfleet.workers.settings import worker_settings

    with pytest.raises(pydantic.ValidationError, match="go together"):
        Settings(redis_sentinels="127.0.0.1:26379")
    with pytest.raises(pydantic.ValidationError, match="not host:port"):
        Settings(redis_sentinels="nohost", redis_sentinel_master="bf")
    with pytest.raises(pydantic.ValidationError, match="exclude each other"):
        Settings(redis_sentinels="h:1", redis_sentinel_master="bf", redis_cluster=True)
    s = Settings(redis_sentinels="a:26379, b:26380", redis_sentinel_master="bf", redis_url="redis://:pw@x/3")
    assert s.sentinel_addresses() == [("a", 26379), ("b", 26380)]
    arq = worker_settings(s)["redis_settings"]
    assert (arq.sentinel, arq.sentinel_master, arq.host, arq.password, arq.database) == (
        True,
        "bf",
        [("a", 26379), ("b", 26380)],
        "pw",
        3,
    )


def test_upload_wait_is_on_with_sentinel_by_default_and_opt_in_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().upload_wait() is None  # a single Redis without replicas: nothing to wait for
    sentinel = {"redis_sentinels": "a:26379", "redis_sentinel_master": "bf"}
    assert Settings(**sentinel).upload_wait() == (1, 500)  # type: ignore[arg-type]
    assert Settings(**sentinel, upload_wait_replicas=0).upload_wait() is None  # type: ignore[arg-type]
    assert Settings(upload_wait_replicas=2, upload_wait_timeout_ms=50).upload_wait() == (2, 50)
    assert Settings(redis_cluster=True).upload_wait() is None  # a cluster may have no replicas: opt in
    assert Settings(redis_cluster=True, upload_wait_replicas=1).upload_wait() == (1, 500)  # on each batch's primary
    for name, value in Settings(**sentinel).as_env().items():  # type: ignore[arg-type]
        monkeypatch.setenv(name, value)
    assert load_settings().upload_wait() == (1, 500)  # "unset" survives the trip through the environment
