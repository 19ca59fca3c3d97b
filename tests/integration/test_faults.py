"""Faults injected against real servers: kill -9 of every role and of redis-server, SIGTERM drains,
upload targets that hang or fail, replays, ACL users, skewed host clocks."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from tests.integration import uploadsink
from tests.integration.fleet import (
    GROUPINGS,
    REPO,
    TEST_SHARDS,
    Proc,
    RedisTarget,
    batches_uploaded,
    fleet,
    make_settings,
    message,
    produce,
    read_uploads,
    settings_env,
    wait_until,
)


async def _running(store: BatchStore, station: str) -> bool:
    live = await store.live_processes("worker")
    return any(station in job for info in live.values() for job in info.get("running", []))


@pytest.mark.slow
@GROUPINGS
async def test_sigkilled_worker_station_is_rerun_and_recorded_once(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path, per_job: int
) -> None:
    """Killed while two long stations run (groups of many: in the same job as two recorded quick ones):
    only the stations without an outcome run again, each once, as its own job."""
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        target,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batch_timeout_s=60.0,
        station_timeout_s=8.0,
        stations_per_job=per_job,
    )
    env = settings_env(settings)
    first = Proc("worker", env, tmp_path / "worker-1.log")
    async with fleet(settings, workers=0):
        await produce(broker.bootstrap, topic, [message(["LONG-1", "S001", "S002", "LONG-2"])])
        await wait_until(lambda: _running(target_store, "LONG-2"), 30, "LONG-2 to start on the first worker")
        await wait_until(lambda: _recorded(target_store, f"{topic}:0:0", 2), 30, "the quick stations to be recorded")
        killed_at = time.monotonic()
        first.kill()
        second = Proc("worker", env, tmp_path / "worker-2.log")
        try:
            await wait_until(lambda: batches_uploaded(target_store, 1), 50, "the upload after the re-run")
            rerun_after_s = time.monotonic() - killed_at
            print(f"\nworker SIGKILL -> station re-run recorded after {rerun_after_s:.1f}s")
            outcomes = await target_store.batch_outcomes(f"{topic}:0:0")
            meta = await target_store.batch_meta(f"{topic}:0:0")
            stats = await target_store.stats()
        finally:
            second.stop()
    [payload] = read_uploads(out)
    assert payload["reason"] == "complete" and payload["summary"]["ok"] == 4
    assert meta["jobs"] == ("4" if per_job == 1 else "1")
    for station in ("LONG-1", "LONG-2"):
        assert outcomes[station].attempt == 2 and outcomes[station].worker.endswith(f":{second.pid}")
    for station in ("S001", "S002"):  # recorded before the kill: not run again
        assert outcomes[station].attempt == 1 and outcomes[station].worker.endswith(f":{first.pid}")
    assert stats.get("duplicate_results", 0) == 0 and stats["stations_ok"] == 4
    # re-run bound: budget + job-timeout room + arq's in-progress margin, + the re-run itself (6 s)
    assert rerun_after_s < 8.0 + 5 + 10 + 6 + 3


async def _recorded(store: BatchStore, batch_id: str, n: int) -> bool:
    return len(await store.batch_outcomes(batch_id)) >= n


@pytest.mark.slow
@GROUPINGS
async def test_station_that_crashes_the_worker_is_given_up(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path, per_job: int
) -> None:
    """A station that kills its worker every time is given up on its own; the stations of its job that
    were recorded before the crash are neither re-run nor given up."""
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        redis_server.url,
        broker.bootstrap,
        [topic],
        f"file://{out}",
        batch_timeout_s=60.0,
        station_timeout_s=1.0,
        stations_per_job=per_job,
    )
    env = settings_env(settings)
    crashes = 0
    async with fleet(settings, workers=0):
        await produce(broker.bootstrap, topic, [message(["CRASHLATE-1", "S001", "NONE-1", "S002"])])
        deadline = time.monotonic() + 55
        while not await batches_uploaded(store, 1):  # a supervisor: restart the worker whenever it dies
            assert time.monotonic() < deadline, "the crashing station was never given up"
            w = Proc("worker", env, tmp_path / f"worker-{crashes}.log")
            while w.alive() and not await batches_uploaded(store, 1):  # noqa: ASYNC110 (polls two conditions)
                await asyncio.sleep(0.1)
            crashes += w.returncode == -signal.SIGKILL
            w.stop()
        outcomes = await store.batch_outcomes(f"{topic}:0:0")
    [payload] = read_uploads(out)
    assert payload["reason"] == "complete"
    assert payload["failed"]["CRASHLATE-1"].startswith("gave up: 2 earlier attempt(s) never finished")
    assert payload["summary"]["ok"] == 2 and payload["empty"] == ["NONE-1"]
    assert crashes == 2
    assert outcomes["CRASHLATE-1"].attempt == 3
    assert all(outcomes[s].attempt == 1 for s in ("S001", "NONE-1", "S002"))


@pytest.mark.slow
async def test_sigterm_worker_finishes_its_station_first(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{out}", batch_timeout_s=30.0)
    worker = Proc("worker", settings_env(settings), tmp_path / "worker.log")
    try:
        async with fleet(settings, workers=0):
            await produce(broker.bootstrap, topic, [message(["LONG-1"])])
            await wait_until(lambda: _running(store, "LONG-1"), 30, "LONG-1 to start")
            worker.signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.popen.wait, 20)
            outcomes = await store.batch_outcomes(f"{topic}:0:0")
            await wait_until(lambda: batches_uploaded(store, 1), 20, "the upload")
    finally:
        worker.kill()  # a no-op once it exited by itself
    assert code == 0
    assert outcomes["LONG-1"].status == "ok" and outcomes["LONG-1"].attempt == 1
    assert read_uploads(out)[0]["reason"] == "complete"
    assert not await store.live_processes("worker")


async def test_killed_aggregator_is_replaced_and_upload_repeats_identically(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    with uploadsink.HttpSink(hang_first_s=60) as sink:
        settings = make_settings(target, broker.bootstrap, [topic], sink.url, lease_s=2.0, upload_timeout_s=30.0)
        first = Proc("aggregator", settings_env(settings), tmp_path / "aggregator-1.log")
        try:
            async with fleet(settings, workers=1, aggregators=0) as f:
                await produce(broker.bootstrap, topic, [message(["S001", "S002"])])
                await wait_until(_first_request(sink), 30, "the first aggregator's upload to start")
                first.kill()  # mid-upload: the claim is leased, nobody will ack it
                killed_at = time.monotonic()
                await f.start_aggregator()
                await wait_until(lambda: batches_uploaded(target_store, 1), 30, "the takeover upload")
                print(f"\naggregator SIGKILL mid-upload -> re-uploaded by another after {time.monotonic() - killed_at:.1f}s")
                meta = await target_store.batch_meta(f"{topic}:0:0")
        finally:
            first.stop()
    assert len(sink.requests) == 2
    (h1, b1), (h2, b2) = sink.requests
    assert h1["idempotency-key"] == h2["idempotency-key"] == f"{topic}:0:0"
    assert b1 == b2
    assert meta["claims"] == "2" and meta["state"] == "uploaded"


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "batchfleet", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def _first_request(sink: uploadsink.HttpSink):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return len(sink.requests) >= 1

    return check


async def test_dead_lettered_batch_is_replayed_from_the_cli(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    with uploadsink.HttpSink(always_fail=True) as sink:
        settings = make_settings(target, broker.bootstrap, [topic], sink.url, upload_max_attempts=2)
        async with fleet(settings, workers=1):
            await produce(broker.bootstrap, topic, [message(["S001"])])

            async def dead() -> bool:
                return bool(await target_store.dead_batch_ids())

            await wait_until(dead, 30, "the dead-letter set")
            sink.always_fail = False  # the target is back
            env = settings_env(settings)
            done = await _cli(env, "replay", "--all")
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"{topic}:0:0: queued for upload" in done.stdout
            await wait_until(lambda: batches_uploaded(target_store, 1), 30, "the replayed upload")
        again = await _cli(env, "replay", f"{topic}:0:0")
    assert again.returncode == 1 and "not dead-lettered (state: uploaded)" in again.stdout
    assert await target_store.dead_batch_ids() == []
    bodies = [b for _, b in sink.requests]
    assert len(bodies) == 3 and bodies[0] == bodies[2]  # same frozen body after the replay


async def test_redis_kill_and_restart_with_aof_loses_nothing(broker: KafkaBroker, make_topic, tmp_path: Path) -> None:
    redis = RedisServer(appendonly=True).start()
    topic = await make_topic(partitions=2)
    out = tmp_path / "u.jsonl"
    settings = make_settings(redis.url, broker.bootstrap, [topic], f"file://{out}", batching="message")
    store = BatchStore.from_url(redis.url, shards=TEST_SHARDS)
    try:
        async with fleet(settings, workers=1):
            await produce(broker.bootstrap, topic, [message([f"A{i}", f"B{i}"]) for i in range(10)], partition=0)
            await wait_until(lambda: batches_uploaded(store, 3), 30, "some uploads before the crash")
            redis.kill()  # kill -9 mid-stream
            await produce(broker.bootstrap, topic, [message([f"C{i}"]) for i in range(10)], partition=1)
            await asyncio.sleep(1.0)  # the fleet runs into a dead Redis for a while (outage, not timing)
            redis.start()  # same port, same AOF directory
            restarted_at = time.monotonic()
            await wait_until(lambda: batches_uploaded(store, 20), 60, "every batch uploaded after the restart")
            print(f"\nredis kill -9 + restart -> every batch uploaded {time.monotonic() - restarted_at:.1f}s after restart")
            stats = await store.stats()
    finally:
        await store.aclose()
        redis.stop()
    uploads = read_uploads(out)
    expected = {f"{topic}:0:{i}" for i in range(10)} | {f"{topic}:1:{i}" for i in range(10)}
    assert {p["batch_id"] for p in uploads} == expected
    assert stats["batches_created"] == 20  # no message ingested twice, none lost
    assert stats["batches_uploaded"] == 20  # each batch acked once
    # An upload whose ack cannot reach Redis before its lease ends is repeated by design (at-least-
    # once delivery keyed by batch id): a repeat must carry the very same body.
    by_id: dict[str, list[object]] = {}
    for p in uploads:
        by_id.setdefault(p["batch_id"], []).append(p)
    assert all(all(b == bodies[0] for b in bodies) for bodies in by_id.values())


@pytest.mark.slow
async def test_dispatcher_killed_repeatedly_ingests_every_message_exactly_once(
    broker: KafkaBroker, target: RedisTarget, target_store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic(partitions=2)
    out = tmp_path / "u.jsonl"
    settings = make_settings(target, broker.bootstrap, [topic], f"file://{out}", batching="message", poll_max_records=7)
    env = settings_env(settings)
    rng = random.Random(3)
    total = 120
    async with fleet(settings, workers=1, dispatchers=0):
        producer = asyncio.create_task(_produce_slowly(broker.bootstrap, topic, total))
        dispatchers: list[Proc] = []
        try:
            for round_ in range(3):
                d = Proc("dispatcher", env, tmp_path / f"dispatcher-{round_}.log")
                dispatchers.append(d)

                async def created_some(before: int = (await target_store.stats()).get("batches_created", 0)) -> bool:
                    created = (await target_store.stats()).get("batches_created", 0)
                    return created > before or created == total

                await wait_until(created_some, 40, "the dispatcher to create batches")
                await asyncio.sleep(rng.uniform(0.05, 0.6))  # kill at an arbitrary point of its loop
                d.kill()
            await producer
            last = Proc("dispatcher", env, tmp_path / "dispatcher-last.log")
            try:
                await wait_until(lambda: batches_uploaded(target_store, total), 90, f"{total} uploads")
            finally:
                last.stop()
            stats = await target_store.stats()
        finally:  # on a failure midway: no producer or dispatcher left running
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            for d in dispatchers:
                d.kill()
    ids = Counter(p["batch_id"] for p in read_uploads(out))
    assert len(ids) == total and set(ids.values()) == {1}
    assert stats["batches_created"] == total


async def _produce_slowly(bootstrap: str, topic: str, total: int) -> None:
    for i in range(0, total, 4):
        await produce(bootstrap, topic, [message([f"S{j}"]) for j in range(i, i + 4)], partition=(i // 4) % 2)
        await asyncio.sleep(0.3)


async def test_acl_user_with_password(broker: KafkaBroker, make_topic, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    redis = RedisServer(extra_args=["--user", "default", "off", "--user", "fleet", "on", ">s3cret-pw", "~*", "&*", "+@all"]).start()
    url = f"redis://fleet:s3cret-pw@127.0.0.1:{redis.port}/0"
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(url, broker.bootstrap, [topic], f"file://{out}")
    caplog.set_level(logging.INFO)
    for name in ("batchfleet", "dispatcher", "workers", "aggregator", "arq"):
        caplog.set_level(logging.DEBUG, logger=name)
    try:
        async with fleet(settings, workers=1):
            await produce(broker.bootstrap, topic, [message(["S001"])])
            store = BatchStore.from_url(url, shards=TEST_SHARDS)
            try:
                await wait_until(lambda: batches_uploaded(store, 1), 30, "upload through the ACL user")
            finally:
                await store.aclose()
        unauthenticated = BatchStore.from_url(redis.url, shards=TEST_SHARDS)
        try:
            with pytest.raises(Exception, match=r"(?i)auth"):
                await unauthenticated.stats()
        finally:
            await unauthenticated.aclose()
    finally:
        redis.stop()
    assert read_uploads(out)[0]["summary"]["ok"] == 1
    assert "s3cret-pw" not in caplog.text
    assert "s3cret-pw" not in out.read_text()
    assert "s3cret-pw" not in repr(settings)


async def test_skewed_host_clock_changes_no_decision(
    broker: KafkaBroker,
    redis_server: RedisServer,
    store: BatchStore,
    make_topic,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every service in this process sees a wall clock 5 minutes behind Redis; deadlines, job pickup
    and leases follow Redis time, so the batch still finalizes at its deadline and uploads once."""
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(
        redis_server.url, broker.bootstrap, [topic], f"file://{out}", batch_timeout_s=1.5, station_timeout_s=30.0
    )
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 300)
    async with fleet(settings, workers=1):
        await produce(broker.bootstrap, topic, [message(["S001", "HANG-1"])])
        await wait_until(lambda: batches_uploaded(store, 1), 30, "the deadline upload")
        meta = await store.batch_meta(f"{topic}:0:0")
    [payload] = read_uploads(out)
    assert payload["reason"] == "deadline" and payload["summary"]["ok"] == 1 and payload["missing"] == ["HANG-1"]
    assert 0 <= int(meta["finalized_ms"]) - int(meta["deadline_ms"]) < 1000  # at the deadline, by Redis time
    assert abs(payload["created_at"] - real_time()) < 60  # timestamps are Redis time, not the skewed clock


def _make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
    return cert, key, ca


async def test_rediss_tls_with_a_private_ca(broker: KafkaBroker, make_topic, tmp_path: Path) -> None:
    cert, key, ca = await asyncio.to_thread(_make_tls_files, tmp_path)
    redis = RedisServer(tls=(cert, key, ca)).start()
    topic = await make_topic()
    out = tmp_path / "u.jsonl"
    settings = make_settings(redis.url, broker.bootstrap, [topic], f"file://{out}", redis_tls_ca_file=ca)
    assert redis.url.startswith("rediss://")
    try:
        async with fleet(settings, workers=1):
            await produce(broker.bootstrap, topic, [message(["S001", "S002"])])
            store = BatchStore.from_settings(settings)
            try:
                await wait_until(lambda: batches_uploaded(store, 1), 30, "an upload over TLS")
            finally:
                await store.aclose()
        unverified = BatchStore.from_url(redis.url, shards=TEST_SHARDS)  # no CA: the server's certificate is not trusted
        try:
            with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
                await unverified.stats()
        finally:
            await unverified.aclose()
    finally:
        redis.stop()
    assert read_uploads(out)[0]["summary"]["ok"] == 2
