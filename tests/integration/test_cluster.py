"""Shards on a real Redis Cluster: a primary killed mid-run with its replica promoted, two fleets on one
Redis and on one cluster, and the layout guard.  (The end-to-end tests of every outcome, quorum,
inspect, replay and role kills run on both a single node and the cluster through the ``target``
fixture in their own modules.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from batchfleet.errors import LayoutError
from batchfleet.store import BatchStore
from batchfleet_dev.cluster import RedisCluster
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from tests.integration.fleet import (
    REPO,
    RedisTarget,
    fleet,
    make_settings,
    message,
    produce,
    read_uploads,
    settings_env,
    wait_until,
)

pytestmark = pytest.mark.slow


def _stations(i: int) -> list[str]:
    return [f"M{i}-S{j}" for j in range(3)]


async def _produce_spread(bootstrap: str, topic: str, first: int, count: int, partitions: int) -> None:
    for i in range(first, first + count):
        await produce(bootstrap, topic, [message(_stations(i))], partition=i % partitions)


def _exactly_once(out: Path, total: int) -> None:
    """Every produced message became one batch, uploaded once, with all its stations ok."""
    uploads = read_uploads(out)
    ids = Counter(p["batch_id"] for p in uploads)
    assert len(ids) == total, f"{total - len(ids)} batch(es) missing"
    assert set(ids.values()) == {1}, [b for b, n in ids.items() if n > 1]
    for p in uploads:
        assert p["summary"]["ok"] == 3 and p["summary"]["missing"] == 0, p


async def test_primary_killed_and_replica_promoted_every_role_recovers(broker: KafkaBroker, make_topic, tmp_path: Path) -> None:
    cluster = RedisCluster(primaries=3, replicas=1, node_timeout_ms=1000).start()
    try:
        topic = await make_topic(partitions=6)
        out = tmp_path / "u.jsonl"
        target = RedisTarget(cluster.url, cluster=True, prefix="fo")
        settings = make_settings(
            target, broker.bootstrap, [topic], f"file://{out}", batching="message", batch_timeout_s=60.0, station_timeout_s=2.0
        )
        async with fleet(settings, workers=2):
            await _produce_spread(broker.bootstrap, topic, 0, 24, 6)
            await wait_until(lambda: _uploaded(out, 12), 60, "uploads before the failover")
            victim = cluster.primary_nodes()[0]
            victim.kill()
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.wait_promoted, 30)
            promoted_s = time.monotonic() - killed_at
            await _produce_spread(broker.bootstrap, topic, 24, 24, 6)
            await wait_until(lambda: _uploaded(out, 48), 90, "every batch uploaded after the failover")
            recovered_s = time.monotonic() - killed_at
        print(
            f"\nprimary SIGKILL -> replica promoted after {promoted_s:.1f}s, every batch uploaded {recovered_s:.1f}s after the kill"
        )
        _exactly_once(out, 48)
    finally:
        cluster.stop()


async def _uploaded(out: Path, n: int) -> bool:
    return len({p["batch_id"] for p in read_uploads(out)}) >= n


async def test_two_fleets_with_their_own_prefixes_share_one_redis(
    broker: KafkaBroker, target: RedisTarget, make_topic, tmp_path: Path
) -> None:
    """Same topics, different consumer groups and prefixes: each fleet uploads every station once,
    and neither ever sees the other's keys, jobs or queues."""
    topic = await make_topic(partitions=3)
    outs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    fleets = [
        make_settings(
            RedisTarget(target.url, target.cluster, f"{target.prefix}-{name}"),
            broker.bootstrap,
            [topic],
            f"file://{out}",
            batching="message",
            kafka_group_id=f"g-{name}-{topic}",
        )
        for name, out in zip("ab", outs, strict=True)
    ]
    await _produce_spread(broker.bootstrap, topic, 0, 30, 3)
    async with fleet(fleets[0], workers=1), fleet(fleets[1], workers=1):
        for out in outs:
            await wait_until(lambda out=out: _uploaded(out, 30), 60, f"every batch of {out.name}")  # type: ignore[misc]
    for out in outs:
        _exactly_once(out, 30)


async def test_a_process_with_another_shard_count_refuses_to_start(broker: KafkaBroker, redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, broker.bootstrap, ["T"], "file:///dev/null")
    async with BatchStore.from_settings(settings) as store:
        await store.check_layout()  # what the fleet's first process stores
        async with BatchStore.from_url(redis_server.url, shards=settings.shards + 1) as other:
            with pytest.raises(LayoutError, match="BATCHFLEET_SHARDS"):
                await other.check_layout()
    env = settings_env(settings) | {"BATCHFLEET_SHARDS": str(settings.shards + 1)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "batchfleet", "dispatcher"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"{settings.shards} shard(s)" in done.stderr and f"BATCHFLEET_SHARDS={settings.shards + 1}" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_session_cluster_has_three_primaries(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.primary_nodes()) == 3
