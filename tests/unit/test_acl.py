"""The ACL users of batchfleet/acl.py against the key names of keys.py and the commands of the Lua
scripts (the integration test runs a fleet with them: tests/integration/test_redis_acl.py)."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from batchfleet.acl import ROLES, acl_rules, password_variable, read_passwords, render, user_name
from batchfleet.errors import ConfigError
from batchfleet.keys import ARQ_IN_PROGRESS_PREFIX, Keys, key_patterns
from batchfleet.store.scripts import SCRIPT_NAMES, script_source

SCRIPTS_OF = {
    "dispatcher": ("create_batch", "quarantine_message"),
    "worker": ("claim_jobs", "record_outcome", "split_group"),
    "aggregator": ("claim_batch", "freeze_payload", "ack_upload", "fail_upload"),
    "operator": ("replay_batch",),
}


def _real_keys(k: Keys) -> dict[str, list[str]]:
    """Kind -> real key names of a fleet with several shards, topics and stations."""
    batches = [f"{topic}:{p}:{o}" for topic in ("SCHEDULE-STATION-REALTIME-DATA", "t.b_c-9") for p in (0, 5) for o in (0, 1234)]
    out: dict[str, list[str]] = {kind: [] for kind in key_patterns(k.prefix)}
    for b in batches:
        out["meta"].append(k.batch(b))
        out["inputs"].append(k.inputs(b))
        out["outcomes"].append(k.outcomes(b))
        out["late"].append(k.late(b))
        out["payload"].append(k.payload(b))
        out["quarantined"].append(k.quarantined(b))
        for job_id in (k.job_id(b, "S:1"), k.group_job_id(b, 3)):
            out["arq_job"].append("arq:job:" + job_id)
            out["arq_in_progress"].append(ARQ_IN_PROGRESS_PREFIX + job_id)
            out["arq_retry"].append("arq:retry:" + job_id)
            out["arq_result"].append("arq:result:" + job_id)
    per_shard = ("due", "leases", "ready", "dead", "recent", "batches", "fence", "offsets", "stats", "rates", "quarantine", "queue")
    for shard in range(k.shards):
        for kind in per_shard:
            out[kind].append(getattr(k, kind)(shard))
        out["queue_health"].append(k.queue(shard) + ":health-check")
    out["arq_abort"].append("arq:abort")
    out["layout"].append(k.layout)
    out["procs"].append(k.procs)
    out["proc"].append(k.proc("worker:host-1:42"))
    return out


@pytest.mark.parametrize("prefix,shards", [("bf", 1), ("bf", 12), ("fleet.2", 64)])
def test_each_key_matches_the_pattern_of_its_kind_only(prefix: str, shards: int) -> None:
    patterns = key_patterns(prefix)
    for kind, keys in _real_keys(Keys(prefix, shards)).items():
        assert keys, kind
        for key in keys:
            matching = sorted(other for other, pattern in patterns.items() if fnmatchcase(key, pattern))
            assert matching == [kind], f"{key}: matches {matching}, not just {kind}"


def test_no_pattern_reaches_another_prefix() -> None:
    ours = key_patterns("bf").values()
    for key in [k for keys in _real_keys(Keys("bf2", 3)).values() for k in keys if not k.startswith("arq:abort")]:
        assert not [p for p in ours if fnmatchcase(key, p)], key


def test_glob_characters_in_a_prefix_are_refused() -> None:
    for bad in ("b*", "b?", "b[0]", "b\\"):
        with pytest.raises(ValueError, match="glob"):
            key_patterns(bad)
    with pytest.raises(ValueError, match="braces"):
        key_patterns("b{x}")


def _lua_commands(name: str) -> set[str]:
    return {c.lower() for c in re.findall(r"redis\.call\('([A-Za-z]+)'", script_source(name))}


def test_every_script_is_run_by_a_role() -> None:
    assert sorted(s for scripts in SCRIPTS_OF.values() for s in scripts) == sorted(SCRIPT_NAMES)


@pytest.mark.parametrize("role", list(SCRIPTS_OF))
def test_a_role_may_send_every_command_its_scripts_call(role: str) -> None:
    """Redis checks the commands a script calls against the user that runs it."""
    allowed = {rule[1:] for rule in acl_rules("bf", role) if rule.startswith("+")}
    assert {"evalsha", "script|load"} <= allowed
    for script in SCRIPTS_OF[role]:
        missing = _lua_commands(script) - allowed
        assert not missing, f"{role} runs {script}.lua, which calls {sorted(missing)}"


def test_the_reader_writes_nothing_and_runs_no_script() -> None:
    rules = acl_rules("bf", "reader")
    assert not [r for r in rules if r.startswith("~")], "the reader has a read-write key pattern"
    commands = {r[1:] for r in rules if r.startswith("+")}
    assert not commands & {"evalsha", "eval", "set", "hset", "del", "zadd", "zrem", "script|load", "flushall", "keys"}


@pytest.mark.parametrize("role", list(ROLES))
def test_no_role_is_given_a_category_or_an_admin_command(role: str) -> None:
    rules = acl_rules("bf", role)
    assert "-@all" in rules and rules.index("-@all") < min(i for i, r in enumerate(rules) if r.startswith("+"))
    granted = [r for r in rules if r.startswith("+")]
    admin = {"config", "flushall", "flushdb", "keys", "scan", "debug", "acl", "eval", "shutdown", "monitor"}
    assert not [r for r in granted if "@" in r or r[1:].split("|")[0] in admin]
    assert not [r for r in rules if r in ("~*", "allkeys", "allcommands", "nopass", "&*", "allchannels")]


def test_the_output_holds_hashes_and_no_password() -> None:
    passwords = {role: f"secret-of-the-{role}-role" for role in ROLES}
    for fmt in ("aclfile", "commands"):
        text = render("bf", passwords, fmt=fmt, admin_password="admin-secret-0123456")
        for secret in [*passwords.values(), "admin-secret-0123456"]:
            assert secret not in text
        assert all(f" {user_name('bf', role)} " in text for role in ROLES)
    aclfile = render("bf", passwords).splitlines()
    assert aclfile[0].startswith("user default reset off"), "without an administrator the default user is off"


def test_passwords_are_read_generated_and_checked(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("OTHER=1\nREDIS_WORKER_PASSWORD='kept-worker-password-1'", encoding="utf-8")  # no final newline
    passwords, admin, generated = read_passwords(env, generate=True)
    assert passwords["worker"] == "kept-worker-password-1" and admin is None
    assert sorted(generated) == sorted(r for r in ROLES if r != "worker")
    again, _, none = read_passwords(env, generate=False)
    assert again == passwords and none == []
    assert "OTHER=1\nREDIS_WORKER_PASSWORD='kept-worker-password-1'\nREDIS_DISPATCHER_PASSWORD=" in env.read_text(encoding="utf-8")
    env.write_text(f"{password_variable('worker')}=short\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="REDIS_WORKER_PASSWORD is shorter") as info:
        read_passwords(env, generate=True)
    assert "short\n" not in str(info.value).replace("shorter", "")
    with pytest.raises(ConfigError, match="REDIS_DISPATCHER_PASSWORD is not set"):
        read_passwords(env, generate=False)
