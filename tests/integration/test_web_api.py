"""The console's JSON API (/api) against real Redis (and, for the actions, a real fleet and broker):
every endpoint, the same data as the CLI's --json, the token on actions, pages over indexes."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from batchfleet import ops
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet_dev.localstack import KafkaBroker, RedisServer
from tests.integration import uploadsink
from tests.integration.fleet import fleet, make_settings, message, produce, wait_until
from tests.integration.webdata import client, make_dead, record, seed, served, spec

TOKEN = "api-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(redis_server: RedisServer, **overrides: object) -> Settings:
    return make_settings(redis_server.url, "127.0.0.1:9", ["t"], "tests.integration.uploadsink:collect", **overrides)


def _without_clock(data: dict[str, object]) -> dict[str, object]:
    """Status data without the fields that move with time."""
    keep = {k: v for k, v in data.items() if k not in ("now_ms", "processes", "rates")}
    keep["open_batches"] = [{k: v for k, v in b.items() if k not in ("age_s", "deadline_in_s")} for b in data["open_batches"]]  # type: ignore[attr-defined]
    return keep


@pytest.mark.slow
async def test_every_endpoint_against_a_live_fleet(
    broker: KafkaBroker, redis_server: RedisServer, store: BatchStore, make_topic, tmp_path: Path
) -> None:
    topic = await make_topic()
    with uploadsink.HttpSink(always_fail=True) as sink:
        settings = make_settings(
            redis_server.url,
            broker.bootstrap,
            [topic],
            sink.url,
            batching="message",
            upload_max_attempts=1,
            batch_timeout_s=60.0,
            station_timeout_s=120.0,
            web_token=TOKEN,
        )
        read_only = settings.model_copy(update={"web_token": None})
        async with fleet(settings, workers=1):
            await produce(
                broker.bootstrap,
                topic,
                [
                    message(["S001", "RAISE-1", "NONE-1"]),  # offset 0: complete -> upload fails -> dead
                    b'{"stationData": "nope"}',  # offset 1: quarantined
                    message(["S002", "HANG-1"]),  # offset 2: stays open (HANG never reports)
                ],
            )
            dead_id, quarantined_id, open_id = f"{topic}:0:0", f"{topic}:0:1", f"{topic}:0:2"

            async def settled() -> bool:
                counts = await store.counts()
                return counts["dead"] == 1 and counts["quarantined"] == 1 and len(await store.batch_outcomes(open_id)) == 1

            await wait_until(settled, 30, "a dead batch, a quarantined message and a half-done open batch")
            async with client(settings, store) as api, client(read_only, store) as ro:
                # -- reads: the same data as the CLI's --json -----------------------------------------
                status = (await api.get("/api/status")).json()
                assert _without_clock(status) == _without_clock(await ops.status_data(store))
                assert {"dispatcher", "worker", "aggregator"} <= {p["role"] for p in status["processes"]}
                overview = (await api.get("/api/overview")).json()
                assert set(overview) == set(status) | {"rates"} and overview["counts"] == status["counts"]
                rates = (await api.get("/api/rates")).json()
                assert len(rates["ok"]) == 360 and rates["slot_ms"] == 10_000 and rates["totals"]["batches"] == 0

                listed = (await api.get("/api/batches")).json()
                assert [r["batch_id"] for r in listed["rows"]] == [open_id, dead_id] and listed["next_cursor"] is None
                cli_rows = await ops.list_batches(store, state=None, topic=None, limit=50)
                strip = [{k: v for k, v in r.items() if k not in ("age_s", "deadline_in_s")} for r in cli_rows]
                assert [{k: v for k, v in r.items() if k not in ("age_s", "deadline_in_s")} for r in listed["rows"]] == strip
                for query, want in (
                    ({"state": "open"}, [open_id]),
                    ({"state": "dead"}, [dead_id]),
                    ({"topic": topic}, [open_id, dead_id]),
                    ({"topic": "OTHER-TOPIC"}, []),
                    ({"q": ":0:2"}, [open_id]),
                ):
                    rows = (await api.get("/api/batches", params=query)).json()["rows"]
                    assert [r["batch_id"] for r in rows] == want, query
                assert (await api.get("/api/batches", params={"state": "sleeping"})).status_code == 422
                assert (await api.get("/api/batches", params={"cursor": "nonsense"})).status_code == 422

                detail = (await api.get(f"/api/batches/{dead_id}")).json()
                assert detail == await ops.batch_detail(store, dead_id)
                by_station = {s["station"]: s for s in detail["stations"]}
                assert (
                    by_station["RAISE-1"]["error"].startswith("ValueError: bad reading") and by_station["RAISE-1"]["attempt"] == 1
                )
                assert (await api.get(f"/api/batches/{topic}:0:99")).status_code == 404
                body = await api.get(f"/api/batches/{dead_id}/payload")
                assert body.headers["content-type"] == "application/json" and body.content == await store.payload(dead_id)
                assert (await api.get(f"/api/batches/{open_id}/payload")).status_code == 404

                dead = (await api.get("/api/dead")).json()
                assert dead["rows"] == await ops.dead_batches(store) and dead["total"] == 1 and dead["next_cursor"] is None
                assert "503" in dead["rows"][0]["last_error"]

                quarantine = (await api.get("/api/quarantine")).json()
                assert quarantine == await ops.quarantine_entries(store)
                entry = (await api.get(f"/api/quarantine/{quarantined_id}")).json()
                assert (
                    entry["value"] == '{"stationData": "nope"}' and entry["truncated"] is False and "not a list" in entry["reason"]
                )
                assert (await api.get(f"/api/quarantine/{topic}:0:42")).status_code == 404

                async with served(settings, store) as url, httpx.AsyncClient(base_url=url, timeout=10) as real:
                    async with real.stream("GET", "/api/overview/stream", params={"interval_s": 0.5}) as stream:
                        assert stream.headers["content-type"].startswith("text/event-stream")
                        lines = stream.aiter_lines()
                        events = []
                        for _ in range(2):  # two events: the stream keeps going
                            assert await anext(lines) == "event: overview"
                            events.append(orjson.loads((await anext(lines)).removeprefix("data: ")))
                            assert await anext(lines) == ""
                assert all(e["counts"] == status["counts"] and "rates" in e for e in events)
                assert events[1]["now_ms"] > events[0]["now_ms"]

                assert (await api.get("/healthz")).text == "ok\n"
                spec_paths = (await api.get("/api/openapi.json")).json()["paths"]
                assert set(spec_paths) == {
                    "/api/status",
                    "/api/rates",
                    "/api/overview",
                    "/api/overview/stream",
                    "/api/batches",
                    "/api/batches/{batch_id}",
                    "/api/batches/{batch_id}/payload",
                    "/api/dead",
                    "/api/dead/{batch_id}/replay",
                    "/api/dead/replay-all",
                    "/api/quarantine",
                    "/api/quarantine/{message_id}",
                    "/api/quarantine/{message_id}/redispatch",
                }

                # -- actions: refused without the token, or on a read-only console ---------------------
                replay_url = f"/api/dead/{dead_id}/replay"
                refused = await ro.post(replay_url, headers=AUTH)
                assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
                assert (await api.post(replay_url)).status_code == 401
                assert (await api.post(replay_url, headers={"Authorization": "Bearer wrong"})).status_code == 401
                assert (await api.post(replay_url, headers=AUTH | {"Origin": "http://evil.example"})).status_code == 403
                assert (await api.post("/api/dead/replay-all")).status_code == 401
                assert (await api.post(f"/api/quarantine/{quarantined_id}/redispatch", json={})).status_code == 401
                assert (await store.batch_meta(dead_id))["state"] == "dead" and len(sink.requests) == 1

                # -- replay-all, then one replay of a batch that is no longer dead ---------------------
                sink.always_fail = False
                replayed = await api.post("/api/dead/replay-all", headers=AUTH)
                assert replayed.json() == [{"batch_id": dead_id, "replayed": True, "state": "dead"}]
                await wait_until(lambda: _state_is(store, dead_id, "uploaded"), 30, "the replayed upload")
                again = await api.post(replay_url, headers=AUTH)
                assert again.json() == {"batch_id": dead_id, "replayed": False, "state": "uploaded"}
                assert [body["batch_id"] for _, body in sink.requests] == [dead_id, dead_id] and sink.statuses == [503, 200]
                rates = (await api.get("/api/rates")).json()
                assert {k: rates["totals"][k] for k in ("ok", "failed", "empty", "missing", "batches")} == {
                    "ok": 1,
                    "failed": 1,
                    "empty": 1,
                    "missing": 0,
                    "batches": 1,
                }
                assert (await store.batch_meta(dead_id))["uploaded_by"].startswith("aggregator-")

                # -- re-dispatch a quarantined message with a corrected value --------------------------
                fixed = message(["S009"]).decode()
                sent = await api.post(f"/api/quarantine/{quarantined_id}/redispatch", json={"value": fixed}, headers=AUTH)
                assert sent.json() == {"message_id": quarantined_id, "redispatched_as": f"{topic}:0:3"}
                await wait_until(lambda: _state_is(store, f"{topic}:0:3", "uploaded"), 30, "the re-dispatched message's upload")
                assert (await api.get(f"/api/quarantine/{quarantined_id}")).json()["redispatched"] == f"{topic}:0:3"
                missing = await api.post(f"/api/quarantine/{topic}:0:77/redispatch", json={}, headers=AUTH)
                assert missing.status_code == 404


async def _state_is(store: BatchStore, batch_id: str, state: str) -> bool:
    return (await store.batch_meta(batch_id)).get("state") == state


async def test_batch_pages_walk_the_whole_index_without_keys(redis_server: RedisServer, store: BatchStore) -> None:
    settings = _settings(redis_server)
    a = await seed(store, "TOPIC-A", 700)
    b = await seed(store, "TOPIC-B", 505)
    created = {bid: int((await store.batch_meta(bid))["created_ms"]) for bid in a + b}
    newest_first = sorted(created, key=lambda bid: (created[bid], bid), reverse=True)
    await store.redis.config_resetstat()
    async with client(settings, store) as api:

        async def walk(params: dict[str, str], limit: int) -> tuple[list[str], int]:
            seen: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                page = (
                    await api.get("/api/batches", params=params | {"limit": str(limit)} | ({"cursor": cursor} if cursor else {}))
                ).json()
                seen += [r["batch_id"] for r in page["rows"]]
                pages += 1
                assert page["scanned"] <= 5000
                cursor = page["next_cursor"]
                if cursor is None:
                    return seen, pages
                assert len(page["rows"]) == limit

        everything, pages = await walk({}, 100)
        assert everything == newest_first and pages == 13  # 1,205 batches, many created in the same ms
        only_b, _ = await walk({"topic": "TOPIC-B"}, 100)
        assert only_b == [bid for bid in newest_first if bid.startswith("TOPIC-B:")]
        found, _ = await walk({"q": "topic-a:0:69"}, 50)
        assert found == [bid for bid in newest_first if bid.startswith("TOPIC-A:0:69")]
        empty = (await api.get("/api/batches", params={"state": "uploaded"})).json()
        assert empty == {"rows": [], "next_cursor": None, "scanned": 1205}  # read to the end of the index, found none
    stats = await store.redis.info("commandstats")
    assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats), "the console must read indexes, never KEYS/SCAN"


async def test_dead_letter_pages(redis_server: RedisServer, store: BatchStore) -> None:
    settings = _settings(redis_server)
    ids = [f"DEAD-TOPIC:0:{i}" for i in range(130)]
    for bid in ids:
        await store.create_batch(spec(bid, ["S001"], timeout_s=0.001))
    for bid in ids:
        await make_dead(store, bid, error=f"503 for {bid}")
    dead_ms = {bid: int((await store.batch_meta(bid))["dead_ms"]) for bid in ids}
    async with client(settings, store) as api:
        seen: list[str] = []
        cursor = None
        while True:
            page = (await api.get("/api/dead", params={"limit": "50"} | ({"cursor": cursor} if cursor else {}))).json()
            assert page["total"] == 130
            seen += [r["batch_id"] for r in page["rows"]]
            assert all(r["last_error"] == f"503 for {r['batch_id']}" for r in page["rows"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == sorted(ids, key=lambda bid: (dead_ms[bid], bid), reverse=True)


async def test_rate_ring_counts_each_upload_once_and_reuses_old_slots(store: BatchStore) -> None:
    await store.create_batch(spec("R:0:0", ["S1", "S2", "S3"], timeout_s=0.001))
    await record(store, "R:0:0", "S1", "ok")
    await record(store, "R:0:0", "S2", "failed", "boom")
    claim = None
    while claim is None:
        claim = await store.claim("R:0:0", 30_000)
    now_ms = await store.server_time_ms()
    slot = now_ms // 10_000
    stale = {f"{pos}:{name}": 7 for pos in range(360) for name in ("ok", "batches")} | {
        f"{pos}:t": slot - 360
        for pos in range(360)  # every position last written an hour ago
    }
    await store.redis.hset(store.keys.rates(store.keys.shard_of_batch("R:0:0")), mapping=stale)
    counts = {"ok": 1, "failed": 1, "empty": 0, "missing": 1}
    first = await store.ack_upload(claim, retention_s=60, upload_ms=1.0, uploaded_by="agg-1", counts=counts)
    again = await store.ack_upload(claim, retention_s=60, upload_ms=1.0, uploaded_by="agg-2", counts=counts)
    assert first == again
    rates = await ops.rates(store)
    assert rates["totals"] == {"ok": 1, "failed": 1, "empty": 0, "missing": 1, "batches": 1}  # stale slots read as 0
    assert sum(1 for v in rates["batches"] if v) == 1 and rates["batches"][-1] + rates["batches"][-2] == 1
    assert (await store.batch_meta("R:0:0"))["uploaded_by"] == "agg-1"
    assert (
        await store.redis.hlen(store.keys.rates(store.keys.shard_of_batch("R:0:0"))) == 360 * 3 + 3
    )  # bounded: the reused position got its other outcomes


async def test_a_redispatch_with_kafka_away_answers_503_not_500(redis_server: RedisServer, store: BatchStore) -> None:
    from batchfleet.models import QuarantineEntry
    from batchfleet_dev.localstack import free_port

    entry = QuarantineEntry("T-away", 0, 4, "invalid JSON", b"{", 1, False)
    assert await store.quarantine(entry, retention_s=600, max_entries=10)
    settings = _settings(redis_server, web_token=TOKEN, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")  # no one there
    async with client(settings, store) as api:
        reply = await api.post("/api/quarantine/T-away:0:4/redispatch", json={}, headers=AUTH)
    assert reply.status_code == 503 and reply.json()["detail"].startswith("cannot reach kafka"), reply.text
    assert (await store.quarantined_entry("T-away:0:4") or {}).get("redispatched") is None  # nothing marked
