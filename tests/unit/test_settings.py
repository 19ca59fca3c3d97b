"""Per-topic configuration: defaults from global settings, overrides from TOML, fail fast on bad keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchfleet.errors import ConfigError
from batchfleet.settings import Settings, load_settings

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


def test_dispatcher_refuses_to_start_with_a_bad_config(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[topics."A-B"]\nbatchng = "poll"\n')
    done = subprocess.run(
        [sys.executable, "-m", "batchfleet", "dispatcher", "--config", str(cfg), "--topics", "A-B"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "batchng" in done.stderr


def test_secret_redis_url_is_masked() -> None:
    s = Settings(redis_url="redis://u:hunter2@h:6379/0")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())


def test_as_env_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchfleet.settings import PriorityLevel

    s = Settings(
        redis_url="redis://u:pw@h:1/0",
        topics=["A-B", "C-D"],
        quorum=0.5,
        metrics_port=9400,
        priorities={"high": PriorityLevel(timeout_s=2.0, boost_s=5.0)},
        upload_auth_header="Bearer t",
    )
    for name, value in s.as_env().items():
        monkeypatch.setenv(name, value)
    again = load_settings()
    assert again.model_dump(exclude={"redis_url", "upload_auth_header"}) == s.model_dump(
        exclude={"redis_url", "upload_auth_header"}
    )
    assert again.redis_url.get_secret_value() == "redis://u:pw@h:1/0"
    assert again.upload_auth_header is not None and again.upload_auth_header.get_secret_value() == "Bearer t"


def test_arq_job_timeout_covers_the_longest_topic_and_priority_deadline(tmp_path: Path) -> None:
    """A topic (or priority level) whose deadline is longer than the global one must not have its
    stations cut off by arq's own job timeout before the station budget ends."""
    from batchfleet.workers.settings import JOB_TIMEOUT_EXTRA_S, worker_settings

    cfg = write(tmp_path, '[topics."SLOW-TOPIC"]\ntimeout_s = 40\n[topics."P-TOPIC".priorities.low]\ntimeout_s = 90\n')
    s = load_settings(config=str(cfg), batch_timeout_s=5.0, redis_url="redis://127.0.0.1:1/0")
    assert s.longest_station_budget_s() == 90
    [function] = worker_settings(s)["functions"]
    assert function.timeout_s == 90 + JOB_TIMEOUT_EXTRA_S
    assert load_settings(station_timeout_s=3.0).longest_station_budget_s() == 3.0
    for field in ("late", "quorum", "priorities", "retention_s", "station_id_field"):  # every field inherits
        assert getattr(load_settings(config=str(cfg)).topic("OTHER"), field) == getattr(load_settings(config=str(cfg)), field)
