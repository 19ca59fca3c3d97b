"""The edges, through the real CLI and real processes: SIGTERM during Redis and Kafka outages, Kafka
unreachable at start, refused credentials and TLS, commands against a closed port, exit codes and
empty outputs."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from batchfleet.models import QuarantineEntry
from batchfleet.ops import STAT_COUNTERS
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics, free_port
from tests.integration.fleet import (
    REPO,
    Proc,
    batches_uploaded,
    fleet,
    make_settings,
    message,
    produce,
    settings_env,
    wait_until,
)

ROLES = ("dispatcher", "worker", "aggregator")
GRACE_S = 2
# A role exits within its grace; a drain still running then is cut short GRACE_MARGIN_S later
# (batchfleet.runtime); allow one more second for the interpreter to exit.
EXIT_BOUND_S = GRACE_S + 2 + 1


def _settings(redis_url: str, bootstrap: str, topics: list[str], uploader: str, **extra: object) -> Settings:
    return make_settings(redis_url, bootstrap, topics, uploader, worker_grace_s=GRACE_S, **extra)


def _log_says(proc: Proc, text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return text in proc.log_tail(1_000_000)

    return check


def _live(store: BatchStore, role: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            return bool(await store.live_processes(role))
        except OSError:
            return False

    return check


async def _sigterm_and_wait(proc: Proc) -> tuple[int, float]:
    """(exit code, seconds from SIGTERM to exit); SIGKILL after a generous bound, so a hang fails."""
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    return code, time.monotonic() - started


def _clean(log: str) -> None:
    assert "Traceback" not in log, log[-3000:]
    assert "Unclosed" not in log, log[-3000:]


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "batchfleet", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# -- SIGTERM at any moment -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
async def test_sigterm_during_a_redis_outage_exits_within_the_grace(
    role: str, broker: KafkaBroker, make_topic, tmp_path: Path
) -> None:
    """The role runs, Redis dies (the worker with a 6 s station in flight), SIGTERM: the process
    drains what it can within BATCHFLEET_WORKER_GRACE_S and exits 0, without a traceback and
    without starting again ("ready") when it cannot reach Redis."""
    redis = RedisServer().start()
    topic = await make_topic()
    settings = _settings(redis.url, broker.bootstrap, [topic], f"file://{tmp_path / 'u.jsonl'}", station_timeout_s=30.0)
    proc = Proc(role, settings_env(settings), tmp_path / f"{role}.log")
    store = BatchStore.from_url(redis.url)
    try:
        await wait_until(_live(store, role), 30, f"the {role}'s heartbeat")
        if role == "worker":
            async with fleet(settings, workers=0, aggregators=0):
                await produce(broker.bootstrap, topic, [message(["LONG-1"])])

                async def running() -> bool:
                    live = await store.live_processes("worker")
                    return any("LONG-1" in job for info in live.values() for job in info.get("running", []))

                await wait_until(running, 30, "the station in flight")
                redis.kill()
        else:
            redis.kill()
        await wait_until(_log_says(proc, "redis failed" if role == "worker" else "redis unavailable"), 30, "the outage noticed")
        proc.note("SIGTERM")
        code, took_s = await _sigterm_and_wait(proc)
    finally:
        proc.kill()
        await store.aclose()
        redis.stop()
    log = proc.log_tail(1_000_000)
    print(f"\n{role}: SIGTERM during a Redis outage -> exit {code} after {took_s:.1f}s (grace {GRACE_S}s)")
    assert code == 0, log[-3000:]
    assert took_s < EXIT_BOUND_S, f"{role} took {took_s:.1f}s after SIGTERM"
    _clean(log)
    assert "ready" not in log.split("--- ")[-1], "the worker started again after SIGTERM"


@pytest.mark.slow
async def test_sigterm_during_a_kafka_outage_exits_within_the_grace(
    redis_server: RedisServer, store: BatchStore, tmp_path: Path
) -> None:
    """Kafka (its own broker) dies under a running dispatcher and an aggregator uploading to
    kafka://: both still exit 0 within the grace after SIGTERM, without a traceback or unclosed clients."""
    kafka = KafkaBroker().start()
    try:
        await create_topics(kafka.bootstrap, ["IN-edge", "OUT-edge"])
        settings = _settings(redis_server.url, kafka.bootstrap, ["IN-edge"], "kafka://OUT-edge", batching="message")
        env = settings_env(settings)
        dispatcher = Proc("dispatcher", env, tmp_path / "dispatcher.log")
        aggregator = Proc("aggregator", env, tmp_path / "aggregator.log")
        try:
            await produce(kafka.bootstrap, "IN-edge", [message(["S001"])])
            async with fleet(settings, workers=1, dispatchers=0, aggregators=0):
                await wait_until(lambda: batches_uploaded(store, 1), 30, "a batch uploaded to kafka://")
            kafka.stop()
            await wait_until(_log_says(dispatcher, "Unable connect"), 30, "the dispatcher noticing the outage")
            results = await asyncio.gather(_sigterm_and_wait(dispatcher), _sigterm_and_wait(aggregator))
        finally:
            dispatcher.kill()
            aggregator.kill()
    finally:
        kafka.stop()
    for proc, (code, took_s) in zip((dispatcher, aggregator), results, strict=True):
        log = proc.log_tail(1_000_000)
        print(f"\n{proc.role}: SIGTERM during a Kafka outage -> exit {code} after {took_s:.1f}s (grace {GRACE_S}s)")
        assert code == 0, log[-3000:]
        assert took_s < EXIT_BOUND_S, f"{proc.role} took {took_s:.1f}s after SIGTERM"
        _clean(log)


@pytest.mark.slow
async def test_kafka_unreachable_at_start_is_waited_for(redis_server: RedisServer, store: BatchStore, tmp_path: Path) -> None:
    """Dispatcher and kafka:// aggregator start before Kafka: they log the wait (no traceback), and
    go to work once a broker listens on the port."""
    port = free_port()
    settings = _settings(redis_server.url, f"127.0.0.1:{port}", ["IN-late"], "kafka://OUT-late", batching="message")
    env = settings_env(settings)
    dispatcher = Proc("dispatcher", env, tmp_path / "dispatcher.log")
    aggregator = Proc("aggregator", env, tmp_path / "aggregator.log")
    kafka = KafkaBroker(port=port)
    try:
        for proc in (dispatcher, aggregator):
            await wait_until(_log_says(proc, f"waiting for kafka at 127.0.0.1:{port}: kafka unavailable"), 30, "the wait")
        assert dispatcher.alive() and aggregator.alive()
        kafka.start()
        await create_topics(kafka.bootstrap, ["IN-late", "OUT-late"])
        await produce(kafka.bootstrap, "IN-late", [message(["S001", "S002"])])
        async with fleet(settings, workers=1, dispatchers=0, aggregators=0):
            await wait_until(lambda: batches_uploaded(store, 1), 60, "the batch ingested and uploaded to kafka://")
        results = await asyncio.gather(_sigterm_and_wait(dispatcher), _sigterm_and_wait(aggregator))
    finally:
        dispatcher.kill()
        aggregator.kill()
        kafka.stop()
    for proc, (code, _) in zip((dispatcher, aggregator), results, strict=True):
        log = proc.log_tail(1_000_000)
        assert code == 0, log[-3000:]
        _clean(log)


async def test_sigterm_while_waiting_for_redis_at_start(tmp_path: Path) -> None:
    settings = _settings(f"redis://127.0.0.1:{free_port()}/0", "127.0.0.1:1", ["T-x"], "file:///dev/null")
    procs = [Proc(role, settings_env(settings), tmp_path / f"{role}.log") for role in ROLES]
    try:
        for proc in procs:
            await wait_until(_log_says(proc, "waiting for redis at 127.0.0.1:"), 30, f"{proc.role} waiting")
        results = await asyncio.gather(*(_sigterm_and_wait(p) for p in procs))
    finally:
        for proc in procs:
            proc.kill()
    for proc, (code, took_s) in zip(procs, results, strict=True):
        assert code == 0 and took_s < EXIT_BOUND_S, (proc.role, code, took_s, proc.log_tail())
        _clean(proc.log_tail(1_000_000))


# -- refused credentials and TLS ----------------------------------------------------------------
ACL = [
    "--user",
    "default",
    "off",
    "--user",
    "fleet",
    "on",
    ">pw",
    "~*",
    "&*",
    "+@all",
    "--user",
    "admin",
    "on",
    ">adminpw",
    "~*",
    "&*",
    "+@all",
]


@pytest.mark.slow
async def test_refused_credentials_fail_fast_at_start_and_are_errors_while_running(
    broker: KafkaBroker, make_topic, tmp_path: Path
) -> None:
    redis = RedisServer(extra_args=ACL).start()
    admin = BatchStore.from_url(f"redis://admin:adminpw@127.0.0.1:{redis.port}/0")
    topic = await make_topic()
    url = f"redis://fleet:pw@127.0.0.1:{redis.port}/0"
    good = _settings(url, broker.bootstrap, [topic], f"file://{tmp_path / 'u.jsonl'}")
    wrong = settings_env(good) | {"BATCHFLEET_REDIS_URL": url.replace(":pw@", ":wrong@")}
    try:
        # at start: one line, exit 2, for every role and for an operator command
        done = await asyncio.gather(*(_cli(wrong, role) for role in (*ROLES, "status")))
        for result in done:
            line = _one_line(result, 2)
            assert f"redis at 127.0.0.1:{redis.port}/0 refused the credentials: AuthenticationError" in line, line
            assert "wrong" not in line
        # while running: the password changes under a worker and an aggregator
        procs = [Proc(role, settings_env(good), tmp_path / f"{role}.log") for role in ("worker", "aggregator")]
        try:
            for proc in procs:
                await wait_until(_live(admin, proc.role), 30, f"the {proc.role}'s heartbeat")
            await admin.redis.execute_command("ACL", "SETUSER", "fleet", "resetpass", ">changed")
            await admin.redis.execute_command("CLIENT", "KILL", "USER", "fleet")
            for proc in procs:
                await wait_until(_log_says(proc, "refused our credentials"), 30, f"the {proc.role} logging the refusal")
                assert proc.alive(), proc.log_tail()
            await admin.redis.execute_command("ACL", "SETUSER", "fleet", "resetpass", ">pw")  # fixed: both recover
            for proc in procs:
                await admin.forget_process(f"{proc.role}:{socket.gethostname()}:{proc.pid}")
                await wait_until(_live(admin, proc.role), 60, f"the {proc.role}'s heartbeat after the fix")
            results = await asyncio.gather(*(_sigterm_and_wait(p) for p in procs))
        finally:
            for proc in procs:
                proc.kill()
    finally:
        await admin.aclose()
        redis.stop()
    for proc, (code, _) in zip(procs, results, strict=True):
        log = proc.log_tail(1_000_000)
        assert code == 0, log[-3000:]
        refusals = [line for line in log.splitlines() if "refused our credentials" in line]
        assert refusals and all(" ERROR " in line for line in refusals), refusals[:3]
        assert "changed" not in log and ":pw@" not in log
        _clean(log)


async def test_a_certificate_that_does_not_verify_fails_fast_at_start(tmp_path: Path) -> None:
    from tests.integration.test_faults import _make_tls_files

    cert, key, ca = await asyncio.to_thread(_make_tls_files, tmp_path)
    redis = RedisServer(tls=(cert, key, ca)).start()
    try:
        env = settings_env(_settings(redis.url, "127.0.0.1:1", ["T-x"], "file:///dev/null"))
        done = await asyncio.gather(_cli(env, "aggregator"), _cli(env, "inspect", "batches"))
    finally:
        redis.stop()
    for result in done:
        line = _one_line(result, 2)
        assert "TLS with redis at 127.0.0.1:" in line and "CERTIFICATE_VERIFY_FAILED" in line, line


# -- operator commands --------------------------------------------------------------------------
@pytest.mark.slow
async def test_every_command_against_a_closed_port_prints_one_line(redis_server: RedisServer, store: BatchStore) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    env = settings_env(_settings(closed, "127.0.0.1:1", [], ""))
    commands = [
        ["status"],
        ["status", "--json"],
        ["inspect", "batch", "T:0:0"],
        ["inspect", "batches"],
        ["inspect", "dead"],
        ["inspect", "dead", "--replay", "T:0:0"],
        ["inspect", "quarantine"],
        ["inspect", "quarantine", "--redispatch", "T:0:0"],
        ["replay", "--all"],
        ["health", "worker"],
    ]
    done = await asyncio.gather(*(_cli(env, *args) for args in commands))
    for args, result in zip(commands, done, strict=True):
        if args[0] == "health":  # a probe answers on stdout
            assert result.returncode == 1 and result.stdout.startswith("unhealthy: cannot read heartbeats from redis at 127.0.0.1:")
            continue
        line = _one_line(result, 1)
        assert line.startswith("Error: cannot reach redis at 127.0.0.1:") and "Connect call failed" in line, (args, line)
    # Redis answers, Kafka does not: re-dispatching a quarantined message is one line too
    entry = QuarantineEntry(topic="T", partition=0, offset=7, reason="test", value=b"{}", size=2, advance_offset=False)
    await store.quarantine(entry, retention_s=60, max_entries=10)
    kafka_down = settings_env(_settings(redis_server.url, f"127.0.0.1:{free_port()}", [], ""))
    line = _one_line(await _cli(kafka_down, "inspect", "quarantine", "--redispatch", "T:0:7"), 1)
    assert line.startswith("Error: cannot reach kafka at 127.0.0.1:") and "Connect call failed" in line, line  # the reason


async def test_exit_codes_and_empty_outputs_are_consistent(redis_server: RedisServer, store: BatchStore) -> None:
    env = settings_env(_settings(redis_server.url, "127.0.0.1:1", [], ""))
    (status, dead, dead_json, batches, quarantine, replay, inspect_replay, missing) = await asyncio.gather(
        _cli(env, "status", "--json"),
        _cli(env, "inspect", "dead"),
        _cli(env, "inspect", "dead", "--json"),
        _cli(env, "inspect", "batches", "--state", "open"),
        _cli(env, "inspect", "quarantine"),
        _cli(env, "replay", "T:0:0"),
        _cli(env, "inspect", "dead", "--replay", "T:0:0"),
        _cli(env, "inspect", "batch", "T:0:0"),
    )
    assert status.returncode == 0 and orjson.loads(status.stdout)["counters"] == dict.fromkeys(STAT_COUNTERS, 0)
    assert (dead.returncode, dead.stdout) == (0, "no dead-lettered batches\n")
    assert (dead_json.returncode, orjson.loads(dead_json.stdout)) == (0, [])
    assert (batches.returncode, batches.stdout) == (0, "no batches with state=open\n")
    assert (quarantine.returncode, quarantine.stdout) == (0, "no quarantined messages\n")
    for result in (replay, inspect_replay):  # the same answer and exit code both ways
        assert (result.returncode, result.stdout) == (1, "T:0:0: not dead-lettered (state: missing)\n"), result
    assert _one_line(missing, 1) == "Error: no batch T:0:0 (never created, or expired after its retention)"
