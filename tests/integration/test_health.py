"""Heartbeats and `batchfleet health` against real processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from tests.integration.fleet import REPO, Proc, make_settings, settings_env, wait_until


def _health(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchfleet", "health", role], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
async def test_health_follows_the_process_heartbeat(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    settings = make_settings(redis_server.url, broker.bootstrap, [topic], f"file://{tmp_path / 'u.jsonl'}")
    env = settings_env(settings)
    assert _health("worker", env).returncode == 1  # nothing running yet
    worker = Proc("worker", env, tmp_path / "worker.log")
    aggregator = Proc("aggregator", env, tmp_path / "aggregator.log")
    try:

        async def both_beating() -> bool:
            live = await store.live_processes()
            return {m.split(":")[0] for m in live} >= {"worker", "aggregator"}

        await wait_until(both_beating, 30, "heartbeats of worker and aggregator")
        ok = _health("worker", env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"worker:{socket.gethostname()}:{worker.pid}" in ok.stdout
        assert _health("dispatcher", env).returncode == 1
        worker.kill()  # SIGKILL: no clean-up, the heartbeat must lapse by its TTL

        async def worker_gone() -> bool:
            return not await store.live_processes("worker")

        await wait_until(worker_gone, 20, "the killed worker's heartbeat to expire")
        assert _health("worker", env).returncode == 1
        assert _health("aggregator", env).returncode == 0
    finally:
        worker.stop()
        assert aggregator.stop() == 0
    assert not await store.live_processes("aggregator")  # a clean exit removes its heartbeat


async def test_uploads_with_less_protection_show_in_status_health_and_console(redis_server: RedisServer, store: BatchStore) -> None:
    """What an aggregator's heartbeat says about uploads running with fewer replicas than configured
    (aggregator/protection.py) reaches `status`, `health` (still healthy: exit 0) and the console."""
    from batchfleet.ops import check_health, status_data
    from tests.integration.webdata import client

    settings = make_settings(redis_server.url, "127.0.0.1:9", ["t"], "file:///dev/null", web_token="a-console-token-of-24-chars")
    member = f"aggregator:{socket.gethostname()}:4242"
    await store.beat(member, {"doing": "waiting"}, 10)
    assert (await status_data(store))["warnings"] == []
    assert (await check_health(settings, "aggregator", None))[1].startswith("healthy: ")
    await store.beat(member, {"doing": "waiting", "upload_protection": {"configured": 1, "in_force": 0, "shards": [0, 2]}}, 10)
    [warning] = (await status_data(store))["warnings"]
    assert warning.startswith(f"{member}: uploads run with less protection than configured")
    assert "once 0 replica(s) hold them, BATCHFLEET_UPLOAD_WAIT_REPLICAS=1 (shards [0, 2]" in warning
    healthy, message = await check_health(settings, "aggregator", None)
    assert healthy and message.startswith("healthy (degraded): ") and warning in message
    async with client(settings, store) as console:
        page = (await console.get("/")).text
    assert 'class="banner warn"' in page and "uploads run with less protection than configured" in page
    await store.forget_process(member)
