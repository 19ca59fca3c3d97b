"""Each role's /metrics endpoint parses with prometheus-client's parser and counts what happened."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer, free_port
from tests.integration.fleet import Proc, make_settings, message, produce, settings_env, wait_until


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


@pytest.mark.slow
async def test_metrics_endpoints_count_what_the_test_produced(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    settings = make_settings(
        redis_server.url,
        broker.bootstrap,
        [topic],
        f"file://{tmp_path / 'u.jsonl'}",
        batching="message",
        batch_timeout_s=1.5,
        station_timeout_s=30.0,
    )
    ports = {role: free_port() for role in ("dispatcher", "worker", "aggregator")}
    procs = []
    for role, port in ports.items():
        env = settings_env(settings) | {"BATCHFLEET_METRICS_PORT": str(port)}
        procs.append(Proc(role, env, tmp_path / f"{role}.log"))
    try:
        await produce(
            broker.bootstrap,
            topic,
            [
                message(["S001", "S002", "NONE-1"]),  # complete: ok 2, empty 1
                message(["S003", "RAISE-1", "HANG-1"]),  # deadline: ok 1, failed 1, missing 1
                b"not json",  # quarantined
            ],
        )

        async def uploaded() -> bool:
            return (await store.stats()).get("batches_uploaded", 0) >= 2

        await wait_until(uploaded, 40, "two uploads")
        # each process counts after it reads its script's reply: scrape until the last counts are in
        scraped: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []

        async def counted() -> bool:
            scraped[:] = [scrape(ports[r]) for r in ("dispatcher", "worker", "aggregator")]
            d, w, a = scraped
            stations = sum(total(w, "batchfleet_stations_total", topic=topic, outcome=o) for o in ("ok", "failed", "empty"))
            return (
                stations == 5
                and total(a, "batchfleet_completion_to_upload_seconds_count", topic=topic) == 2
                and total(d, "batchfleet_messages_quarantined_total", topic=topic) == 1
            )

        await wait_until(counted, 20, "the workers' and the aggregator's counters")
        d, w, a = scraped
    finally:
        for p in procs:
            p.stop()
    assert total(d, "batchfleet_batches_created_total", topic=topic) == 2
    assert total(d, "batchfleet_stations_dispatched_total", topic=topic) == 6
    assert total(d, "batchfleet_jobs_dispatched_total", topic=topic) == 2  # one group of 3 per batch (one worker)
    assert total(d, "batchfleet_messages_quarantined_total", topic=topic) == 1
    assert total(w, "batchfleet_stations_total", topic=topic, outcome="ok") == 3
    assert total(w, "batchfleet_stations_total", topic=topic, outcome="failed") == 1
    assert total(w, "batchfleet_stations_total", topic=topic, outcome="empty") == 1
    assert total(a, "batchfleet_batches_finalized_total", topic=topic, reason="complete") == 1
    assert total(a, "batchfleet_batches_finalized_total", topic=topic, reason="deadline") == 1
    assert total(a, "batchfleet_batches_uploaded_total", topic=topic) == 2
    assert total(a, "batchfleet_stations_uploaded_total", topic=topic, outcome="missing") == 1
    assert total(a, "batchfleet_batch_latency_seconds_count", topic=topic) == 2
    assert total(a, "batchfleet_completion_to_upload_seconds_count", topic=topic) == 2
    for samples in (d, w, a):  # no batch or station ids as label values
        for _, labels in samples:
            assert not any(":" in v and v.startswith(topic + ":") for _, v in labels)


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("bind", [None, "127.0.0.2"], ids=["default-loopback", "configured"])
async def test_metrics_listen_on_the_configured_host_only(
    broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path, bind: str | None
) -> None:
    """BATCHFLEET_METRICS_HOST: 127.0.0.1 unless set (never every interface); set, only that address."""
    settings = make_settings(redis_server.url, broker.bootstrap, [], f"file://{tmp_path / 'u.jsonl'}")
    port = free_port()
    env = settings_env(settings) | {"BATCHFLEET_METRICS_PORT": str(port)} | ({"BATCHFLEET_METRICS_HOST": bind} if bind else {})
    proc = Proc("aggregator", env, tmp_path / "aggregator.log")
    here, elsewhere = (bind or "127.0.0.1"), ("127.0.0.1" if bind else "127.0.0.2")
    try:

        async def listening() -> bool:
            assert proc.alive(), proc.log_tail()
            return _answers(here, port)

        await wait_until(listening, 30, f"/metrics on {here}:{port}")
        assert not _answers(elsewhere, port), f"/metrics also answers on {elsewhere}"
    finally:
        assert proc.stop() == 0, proc.log_tail()
