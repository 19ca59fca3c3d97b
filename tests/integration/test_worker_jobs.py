"""Station jobs on a real redis-server: the batched claim, groups of stations carried in one job (and
one-station jobs, the shape of earlier releases), stations of a group running concurrently and recorded
as they finish, and the checks that keep a worker from running stations of a batch that is already
finalized."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.worker import func

from batchfleet.errors import StoreError
from batchfleet.keys import ARQ_IN_PROGRESS_PREFIX, ARQ_JOB_PREFIX, Keys
from batchfleet.models import BatchSpec, JobShape, Outcome, PartitionRange
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.workers.fastclaim import StationWorker
from batchfleet.workers.jobs import run_station
from batchfleet.workers.main import _close, run_worker
from batchfleet.workers.nodes import open_pools
from batchfleet_dev.localstack import RedisServer
from tests.integration.fleet import REPO, TEST_SHARDS, make_settings, settings_env, wait_until

KEYS = Keys("bf", TEST_SHARDS)


def _settings(redis_server: RedisServer, **overrides: Any) -> Settings:
    return make_settings(redis_server.url, "127.0.0.1:9", ["t"], "tests.integration.uploadsink:collect", **overrides)


INC = "5eed0001"  # the incarnation of the batches these tests create


def _spec(
    batch_id: str, stations: list[str], *, timeout_s: float = 60.0, groups: list[int] | None = None, shape: JobShape = "group"
) -> BatchSpec:
    topic, partition, offset = batch_id.rsplit(":", 2)
    return BatchSpec(
        batch_id=batch_id,
        topic=topic,
        timeout_s=timeout_s,
        retention_s=60,
        stations={s: [{"stationId": s, "v": i}] for i, s in enumerate(stations)},
        ranges=[PartitionRange(topic, int(partition), int(offset), int(offset) + 1)],
        group_sizes=groups or [],
        job_shape=shape,
        incarnation=INC,
    )


async def _queue(store: BatchStore, job_ids: dict[str, float]) -> None:
    for job_id, score in job_ids.items():
        await store.redis.zadd(store.keys.queue(0), {job_id: score})


def test_arq_key_prefixes_match_arq() -> None:
    assert (ARQ_JOB_PREFIX, ARQ_IN_PROGRESS_PREFIX) == (job_key_prefix, in_progress_key_prefix)


async def test_claim_takes_only_queued_due_unclaimed_jobs(store: BatchStore) -> None:
    now = int(time.time() * 1000)
    await _queue(store, {"due-1": now - 5, "future": now + 60_000, "running": now - 4, "due-2": now - 3})
    await store.redis.set(KEYS.in_progress("running"), b"1")
    claimed = await store.claim_jobs(0, ["due-1", "future", "running", "gone", "due-2"], now_ms=now, in_progress_ms=30_000, want=10)
    assert claimed == [("due-1", now - 5), ("due-2", now - 3)]
    ttl = await store.redis.pttl(KEYS.in_progress("due-1"))
    assert 29_000 < ttl <= 30_000
    assert not await store.redis.exists(KEYS.in_progress("future"), KEYS.in_progress("gone"))
    # claimed once: a second worker gets nothing
    assert await store.claim_jobs(0, ["due-1", "due-2"], now_ms=now, in_progress_ms=30_000, want=10) == []


async def test_claim_takes_at_most_the_free_slots_in_queue_order(store: BatchStore) -> None:
    now = int(time.time() * 1000)
    ids = [f"j{i}" for i in range(6)]
    await _queue(store, {job_id: now - 100 + i for i, job_id in enumerate(ids)})
    assert [j for j, _ in await store.claim_jobs(0, ids, now_ms=now, in_progress_ms=5_000, want=2)] == ["j0", "j1"]
    assert [j for j, _ in await store.claim_jobs(0, ids, now_ms=now, in_progress_ms=5_000, want=3)] == ["j2", "j3", "j4"]
    assert await store.claim_jobs(0, ids, now_ms=now, in_progress_ms=5_000, want=0) == []


async def test_group_jobs_carry_their_stations_records_budget_and_deadline(store: BatchStore) -> None:
    created, created_ms = await store.create_batch(_spec("t:0:0", ["S1", "S2", "S3"], timeout_s=7.5, groups=[2, 1]))
    assert created
    jobs = [orjson.loads(await store.redis.get(KEYS.group_job("t:0:0", i, INC))) for i in (0, 1)]
    assert all(job["f"] == "run_group" and job["k"] == {} for job in jobs)
    deadline_ms = created_ms + 7500
    assert jobs[0]["a"] == [{"S1": [{"stationId": "S1", "v": 0}], "S2": [{"stationId": "S2", "v": 1}]}, 7500, deadline_ms]
    assert jobs[1]["a"] == [{"S3": [{"stationId": "S3", "v": 2}]}, 7500, deadline_ms]
    queued = {m.decode() for m in await store.redis.zrange(KEYS.queue(KEYS.shard_of_batch("t:0:0")), 0, -1)}
    assert queued == {KEYS.group_job_id("t:0:0", 0, INC), KEYS.group_job_id("t:0:0", 1, INC)}
    assert KEYS.parse_group_job(KEYS.group_job_id("t:0:0", 1, INC)) == ("t:0:0", INC)
    assert (await store.batch_meta("t:0:0"))["inc"] == INC
    meta = await store.batch_meta("t:0:0")
    assert int(meta["deadline_ms"]) == deadline_ms and meta["expected"] == "3" and meta["jobs"] == "2"
    # the inputs hash holds the expected stations; their records live in the jobs
    assert await store.redis.hgetall(KEYS.inputs("t:0:0")) == {b"S1": b"", b"S2": b"", b"S3": b""}
    assert (await store.stats())["jobs_dispatched"] == 2


async def test_station_shaped_jobs_are_what_earlier_releases_queued(store: BatchStore) -> None:
    """The shape a dispatcher uses while a worker of an earlier release is alive: one job per station,
    ``[records, budget_ms, deadline_ms]``, named ``{BATCH}:STATION``."""
    created, created_ms = await store.create_batch(_spec("t:0:0", ["S1", "S2"], timeout_s=7.5, shape="station"))
    assert created
    job = orjson.loads(await store.redis.get(KEYS.job("t:0:0", "S2")))
    assert job["f"] == "run_station" and job["k"] == {}
    assert job["a"] == [[{"stationId": "S2", "v": 1}], 7500, created_ms + 7500]  # records, budget_ms, deadline_ms
    assert await store.queue_depth() == 2 and (await store.batch_meta("t:0:0"))["jobs"] == "2"


async def test_group_sizes_must_cover_the_batch(store: BatchStore) -> None:
    with pytest.raises(StoreError, match="do not cover"):
        await store.create_batch(_spec("t:0:0", ["S1", "S2", "S3"], groups=[1, 1]))
    assert await store.batch_meta("t:0:0") == {}


async def test_recording_several_stations_in_one_call(store: BatchStore) -> None:
    """Each station of the call gets its own verdict; the call that records the last one completes
    the batch, once."""
    await store.create_batch(_spec("t:0:0", ["S1", "S2", "S3"]))
    ok, failed = Outcome(status="ok", result={"v": 1}), Outcome(status="failed", error="ValueError: x")
    first = await store.record_outcomes("t:0:0", [("S1", ok), ("S2", failed), ("NOPE", ok)])
    assert (first.codes, first.done, first.expected, first.event) == ("rru", 2, 3, "")
    second = await store.record_outcomes("t:0:0", [("S2", ok), ("S3", ok)])
    assert (second.codes, second.done, second.event) == ("dr", 3, "complete")
    assert await store.redis.lrange(KEYS.ready(KEYS.shard_of_batch("t:0:0")), 0, -1) == [b"t:0:0"]
    stats = await store.stats()
    assert (stats["stations_ok"], stats["stations_failed"], stats["duplicate_results"]) == (2, 1, 1)
    outcomes = await store.batch_outcomes("t:0:0")
    assert outcomes["S2"].status == "failed" and outcomes["S2"].error == "ValueError: x"  # the first outcome stays
    await store.redis.hset(KEYS.batch("t:0:0"), "state", "finalized")
    again = await store.record_outcomes("t:0:0", [("S3", ok)])
    assert again.codes == "d" and (await store.record_outcomes("gone:0:0", [("S1", ok)])).codes == "u"


async def test_a_batchfleet_worker_and_a_plain_arq_worker_share_a_queue(
    redis_server: RedisServer, store: BatchStore, tmp_path: Path
) -> None:
    """Both claim protocols guard the same in-progress keys, and both run group jobs (the plain arq
    worker with arq's own claim): every station runs and is recorded once (a plain arq worker serves
    one queue: the fleet has one shard)."""
    settings = _settings(redis_server, worker_max_jobs=5, shards=1)
    stations = [f"W-{i:03d}" for i in range(400)]  # 50 ms each: long enough for both workers to take some
    store = BatchStore.from_settings(settings, name="test-one-shard")
    log = (tmp_path / "arq.log").open("wb")
    arq = subprocess.Popen(  # noqa: ASYNC220 (started once, never waited on in the loop)
        [sys.executable, "-m", "arq", "batchfleet.workers.WorkerSettings"],
        env=settings_env(settings),
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    ours: asyncio.Task[None] | None = None
    try:
        await wait_until(lambda: _workers_live(store, 1), 60, "the plain arq worker to start")
        ours = asyncio.create_task(run_worker(settings))
        await wait_until(lambda: _workers_live(store, 2), 60, "our worker to start")
        await store.create_batch(_spec("t:0:0", stations, groups=[4] * 100))  # both are polling by now
        await wait_until(lambda: _all_recorded(store, "t:0:0", len(stations)), 60, "every station recorded")
        outcomes = await store.batch_outcomes("t:0:0")
        stats = await store.stats()
    finally:
        if ours is not None:
            ours.cancel()
        arq.terminate()
        arq.wait(20)
        log.close()
        await asyncio.gather(*([ours] if ours else []), return_exceptions=True)
        await store.aclose()
    assert sorted(outcomes) == stations and all(o.status == "ok" for o in outcomes.values())
    assert len({o.worker for o in outcomes.values()}) == 2, "both workers ran stations"
    assert stats.get("duplicate_results", 0) == 0 and stats["stations_ok"] == len(stations)
    assert all(o.attempt == 1 for o in outcomes.values()), "no station was started twice"


def test_a_plain_arq_worker_refuses_a_fleet_of_several_shards(redis_server: RedisServer) -> None:
    """It would serve one shard's queue only (and on a cluster arq's own finish is cross-slot)."""
    done = subprocess.run(
        [sys.executable, "-m", "arq", "batchfleet.workers.WorkerSettings"],
        env=settings_env(_settings(redis_server, shards=2)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "BATCHFLEET_SHARDS=1" in done.stderr and "batchfleet worker" in done.stderr


async def _workers_live(store: BatchStore, n: int) -> bool:
    return len(await store.live_processes("worker")) >= n


async def _all_recorded(store: BatchStore, batch_id: str, n: int) -> bool:
    return int(await store.redis.hlen(store.keys.outcomes(batch_id))) >= n


async def test_one_station_jobs_of_an_earlier_release_still_run(redis_server: RedisServer, store: BatchStore) -> None:
    """Rolling upgrade: jobs queued in the one-station shape (by an earlier release, or while one of its
    workers was alive) run on this release's workers like group jobs do."""
    await store.create_batch(_spec("t:0:0", ["S1", "NONE-1", "RAISE-1"], shape="station"))
    await run_worker(_settings(redis_server), burst=True)
    outcomes = await store.batch_outcomes("t:0:0")
    assert {s: o.status for s, o in outcomes.items()} == {"S1": "ok", "NONE-1": "empty", "RAISE-1": "failed"}
    assert all(o.attempt == 1 for o in outcomes.values())
    assert (
        await store.batch_state("t:0:0") == "open"
        and await store.redis.zscore(KEYS.due(KEYS.shard_of_batch("t:0:0")), "t:0:0") == 0
    )


async def test_every_outcome_in_one_group(redis_server: RedisServer, store: BatchStore) -> None:
    """One job, eight stations: each gets its own outcome, error text, duration and one record; a
    station that hangs, raises or returns garbage changes only its own outcome."""
    stations = ["S-1", "NONE-1", "RAISE-1", "LIST-1", "NONJSON-1", "HUGE-1", "HANG-1", "S-2"]
    await store.create_batch(_spec("t:0:0", stations, groups=[len(stations)]))
    await run_worker(_settings(redis_server, station_timeout_s=1.0), burst=True)
    o = await store.batch_outcomes("t:0:0")
    assert {s: o[s].status for s in stations} == {
        "S-1": "ok",
        "NONE-1": "empty",
        "RAISE-1": "failed",
        "LIST-1": "failed",
        "NONJSON-1": "failed",
        "HUGE-1": "failed",
        "HANG-1": "failed",
        "S-2": "ok",
    }
    assert o["S-1"].result == {"stationId": "S-1", "n": 1, "values": [0]}
    assert o["RAISE-1"].error == "ValueError: bad reading at RAISE-1"
    assert o["LIST-1"].error == "processor returned list, expected dict or None"
    assert o["NONJSON-1"].error is not None and "not JSON-encodable" in o["NONJSON-1"].error
    assert o["HUGE-1"].error is not None and "over the 1048576-byte limit" in o["HUGE-1"].error
    assert o["HANG-1"].error == "timeout: no result within the 1s station budget"
    assert o["HANG-1"].duration_ms >= 1000 > o["S-1"].duration_ms
    assert {x.attempt for x in o.values()} == {1} and len({x.worker for x in o.values()}) == 1
    stats = await store.stats()
    assert (stats["stations_ok"], stats["stations_empty"], stats["stations_failed"]) == (2, 1, 5)
    assert stats.get("duplicate_results", 0) == 0 and await store.batch_state("t:0:0") == "open"


@pytest.mark.parametrize("processor", ["async_process", "sync_process"])
async def test_stations_of_a_group_run_at_the_same_time(redis_server: RedisServer, store: BatchStore, processor: str) -> None:
    """Async stations of a group run together on the event loop, sync ones each on its own thread."""
    stations = [f"STAMP-{i}" for i in range(6)]
    await store.create_batch(_spec("t:0:0", stations, groups=[6]))
    settings = _settings(redis_server, processor=f"tests.integration.processors:{processor}")
    await run_worker(settings, burst=True)
    results = [o.result for o in (await store.batch_outcomes("t:0:0")).values()]
    assert len(results) == 6 and all(r is not None for r in results)
    assert max(r["start"] for r in results if r) < min(r["end"] for r in results if r), "every station ran at once"


async def test_a_station_is_recorded_when_it_is_done_not_when_its_group_is(redis_server: RedisServer, store: BatchStore) -> None:
    await store.create_batch(_spec("t:0:0", ["S-1", "LONG-1", "NONE-1"], groups=[3]))
    worker = asyncio.create_task(run_worker(_settings(redis_server, station_timeout_s=30.0)))
    try:
        await wait_until(lambda: _all_recorded(store, "t:0:0", 2), 30, "the quick stations recorded")
        outcomes = await store.batch_outcomes("t:0:0")

        async def only_long_running() -> bool:  # the heartbeat (every 2 s) shows what is still running
            return [info.get("running") for info in (await store.live_processes("worker")).values()] == [["t:0:0/LONG-1"]]

        await wait_until(only_long_running, 10, "the heartbeat to show LONG-1 still running")
        [info] = (await store.live_processes("worker")).values()
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert sorted(outcomes) == ["NONE-1", "S-1"], "recorded while LONG-1 (6 s) of the same job still ran"
    assert info["job_shapes"] == ["group", "station"]


async def test_stations_of_a_batch_past_its_finalized_deadline_are_skipped(redis_server: RedisServer, store: BatchStore) -> None:
    """The job's deadline tells the worker to read the batch state first; a finalized batch's stations
    are skipped, not run and recorded late."""
    await store.create_batch(_spec("t:0:0", [f"S{i}" for i in range(20)], timeout_s=0.2, groups=[5] * 4))
    await asyncio.sleep(0.3)
    await store.redis.hset(KEYS.batch("t:0:0"), "state", "finalized")  # as the aggregator does at the deadline
    await run_worker(_settings(redis_server), burst=True)
    stats = await store.stats()
    assert stats.get("late_results", 0) == 0
    assert await store.redis.hlen(KEYS.outcomes("t:0:0")) == 0
    assert await store.queue_depth() == 0


async def test_after_one_late_result_a_worker_skips_the_batch(redis_server: RedisServer, store: BatchStore) -> None:
    """A batch finalized before its deadline (quorum): the first group this worker runs comes back
    late; the worker then checks the state before each further group of that batch and skips them."""
    await store.create_batch(_spec("t:0:0", [f"S{i}" for i in range(10)], timeout_s=600, groups=[2] * 5))
    await store.redis.hset(KEYS.batch("t:0:0"), "state", "finalized")
    await run_worker(_settings(redis_server, worker_max_jobs=1), burst=True)
    stats = await store.stats()
    assert stats["late_results"] == 2  # the first group's two stations
    assert await store.queue_depth() == 0


async def test_a_group_that_runs_again_re_runs_only_its_unrecorded_stations_one_by_one(
    redis_server: RedisServer, store: BatchStore
) -> None:
    """A group job whose worker died (arq runs it again, job_try 2): the stations that have an outcome
    are not run again; each other station gets a one-station job that counts the lost attempt."""
    await store.create_batch(_spec("t:0:0", ["S-1", "S-2", "S-3", "S-4"], groups=[4]))
    await store.record_outcome("t:0:0", "S-2", Outcome(status="ok", result={"kept": True}, worker="dead:1"))
    await store.redis.set("arq:retry:" + KEYS.group_job_id("t:0:0", 0, INC), 1)  # arq counts runs here: the first one died
    await run_worker(_settings(redis_server), burst=True)
    outcomes = await store.batch_outcomes("t:0:0")
    assert outcomes["S-2"].result == {"kept": True} and outcomes["S-2"].worker == "dead:1"
    assert {s: o.attempt for s, o in outcomes.items()} == {"S-1": 2, "S-2": 1, "S-3": 2, "S-4": 2}
    stats = await store.stats()
    assert stats["stations_ok"] == 4 and stats.get("duplicate_results", 0) == 0
    assert await store.queue_depth() == 0 and not await store.redis.exists(KEYS.group_job("t:0:0", 0, INC))


async def test_a_split_is_repeated_without_queueing_a_station_twice(store: BatchStore) -> None:
    await store.create_batch(_spec("t:0:0", ["S-1", "S-2"], groups=[2]))
    jobs = {"S-1": b'{"f":"run_station"}', "S-2": b'{"f":"run_station"}'}
    split = functools.partial(store.split_group, "t:0:0", jobs, score=1, job_expire_ms=60_000, incarnation=INC)
    assert await split() == ("split", 2, 0)
    assert await split() == ("split", 0, 0)
    await store.record_outcome("t:0:0", "S-1", Outcome(status="ok"))
    assert await split() == ("split", 0, 1)
    queued = sorted(m.decode() for m in await store.redis.zrange(KEYS.queue(KEYS.shard_of_batch("t:0:0")), 0, -1))
    assert queued == sorted([KEYS.group_job_id("t:0:0", 0, INC), *(KEYS.job_id("t:0:0", s, INC) for s in ("S-1", "S-2"))])
    assert (await store.split_group("t:0:0", jobs, score=1, job_expire_ms=60_000, incarnation="0ther0ne"))[0] == "stale"
    await store.redis.hset(KEYS.batch("t:0:0"), "state", "finalized")
    assert (await split())[0] == "closed"


async def test_dispatcher_spreads_a_batch_over_the_live_workers_and_speaks_to_old_ones(
    redis_server: RedisServer, store: BatchStore
) -> None:
    """Group sizes follow the batch size, STATIONS_PER_JOB and the live workers (heartbeats); while a
    worker of an earlier release (no ``job_shapes`` in its heartbeat) is alive, every station gets its
    own job in the shape that release runs."""
    from batchfleet.dispatcher.service import Dispatcher
    from tests.unit.messages import Msg

    dispatcher = Dispatcher(_settings(redis_server, stations_per_job=4), store)
    offsets = iter(range(100))

    async def dispatch(n: int) -> tuple[str, list[str]]:
        offset = next(offsets)
        await dispatcher.dispatch([Msg("t", 0, offset, message_of([f"S{i}" for i in range(n)]))])
        queue = KEYS.queue(KEYS.shard_of_partition("t", 0))
        return f"t:0:{offset}", sorted(m.decode() for m in await store.redis.zrange(queue, 0, -1))

    async def jobs_of(batch_id: str) -> list[int]:
        inc = (await store.batch_meta(batch_id))["inc"]
        return [
            len(orjson.loads(await store.redis.get(KEYS.group_job(batch_id, i, inc)))["a"][0])
            for i in range(100)
            if await store.redis.exists(KEYS.group_job(batch_id, i, inc))
        ]

    await dispatcher.look_at_workers(now=True)  # nobody is alive: as few jobs as the setting allows
    bid, _ = await dispatch(10)
    assert await jobs_of(bid) == [4, 3, 3]
    for pid in range(5):
        await store.beat(f"worker:host:{pid}", {"doing": "idle", "job_shapes": ["group", "station"]}, 10)
    await dispatcher.look_at_workers(now=True)
    bid, _ = await dispatch(10)
    assert await jobs_of(bid) == [2, 2, 2, 2, 2]  # one job per live worker
    bid, _ = await dispatch(3)
    assert await jobs_of(bid) == [1, 1, 1]  # never more jobs than stations
    bid, _ = await dispatch(30)
    assert await jobs_of(bid) == [4, 4, 4, 4, 4, 4, 3, 3]  # big batches: few jobs, sizes balanced
    await store.beat("worker:old-host:9", {"doing": "idle"}, 10)  # a worker of the previous release
    await dispatcher.look_at_workers(now=True)
    bid, queued = await dispatch(2)
    assert dispatcher.job_shape == "station" and {KEYS.job_id(bid, "S0"), KEYS.job_id(bid, "S1")} <= set(queued)
    assert orjson.loads(await store.redis.get(KEYS.job(bid, "S1")))["f"] == "run_station"
    await store.forget_process("worker:old-host:9")
    await dispatcher.look_at_workers(now=True)
    bid, _ = await dispatch(2)
    assert dispatcher.job_shape == "group" and await jobs_of(bid) == [1, 1]


def message_of(stations: list[str]) -> bytes:
    return orjson.dumps({"stationData": [{"stationId": s} for s in stations]})


async def test_a_repeated_ack_changes_nothing(store: BatchStore) -> None:
    """An aggregator retries an ack whose reply it never got (Redis killed right after running it):
    the batch stays uploaded once, with the first ack's time and one count in the stats."""
    await store.create_batch(_spec("t:0:0", ["S1"]))
    assert (await store.record_outcome("t:0:0", "S1", Outcome(status="ok", result={"v": 1}))).status == "complete"
    claim = await store.claim("t:0:0", lease_ms=30_000)
    assert claim is not None
    assert await store.freeze_payload(claim, b"{}") == b"{}"
    first = await store.ack_upload(claim, retention_s=60, upload_ms=1.0)
    again = await store.ack_upload(claim, retention_s=60, upload_ms=2.0)
    assert first is not None and again == first
    stats = await store.stats()
    assert stats["batches_uploaded"] == 1 and stats["batches_complete"] == 1
    assert await store.recent_batch_ids() == ["t:0:0"]


class _HeldFinishWorker(StationWorker):
    """A StationWorker whose job finishes wait for ``gate`` before they write (a slow round trip)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = asyncio.Event()
        self.finishing_started = asyncio.Event()

    async def _finish_job(self, *args: Any) -> None:
        self.finishing_started.set()
        await self.gate.wait()
        await super()._finish_job(*args)


async def _cancelled_mid_finish(worker: StationWorker, job_id: str) -> None:
    """What arq does when a job is cancelled at shutdown while it writes the job's end: the run_job
    task ends, the shielded finish goes on."""

    async def run_job() -> None:
        await asyncio.shield(worker.finish_job(job_id, True, None, 60.0, False, None, None))

    job = asyncio.create_task(run_job())
    await asyncio.wait_for(cast(_HeldFinishWorker, worker).finishing_started.wait(), 10)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job


async def _held_worker(redis_server: RedisServer, store: BatchStore) -> _HeldFinishWorker:
    settings = _settings(redis_server)
    [(pool, shards)] = await open_pools(settings, store, name="test-worker-arq")
    return _HeldFinishWorker(keys=store.keys, shards=shards, redis_pool=pool, functions=[func(run_station, name="run_station")])


def _connected(pool: ArqRedis) -> int:
    connections = pool.connection_pool
    return sum(c.is_connected for c in [*connections._available_connections, *connections._in_use_connections])


async def test_a_worker_closes_its_client_only_after_the_finish_of_a_cancelled_job(
    redis_server: RedisServer, store: BatchStore
) -> None:
    worker = await _held_worker(redis_server, store)
    await store.redis.set(job_key_prefix + KEYS.group_job_id("t:0:1", 0), b"job")
    await _cancelled_mid_finish(worker, KEYS.group_job_id("t:0:1", 0))
    pool = worker.pool
    closing = asyncio.create_task(_close(worker))
    try:
        done, _ = await asyncio.wait({closing}, timeout=0.5)
        assert not done, "the client was closed under a finish still running"
    finally:
        worker.gate.set()
        await asyncio.wait_for(closing, 10)
    assert not await store.redis.exists(job_key_prefix + KEYS.group_job_id("t:0:1", 0))  # the finish wrote the job's end
    assert not worker.finishing
    assert _connected(pool) == 0  # nothing left open by the close


async def test_a_finish_that_does_not_end_is_cancelled_at_close(redis_server: RedisServer, store: BatchStore) -> None:
    worker = await _held_worker(redis_server, store)
    worker.finish_wait_s = 0.2
    await store.redis.set(job_key_prefix + KEYS.group_job_id("t:0:2", 0), b"job")
    await _cancelled_mid_finish(worker, KEYS.group_job_id("t:0:2", 0))
    [finish] = worker.finishing
    pool = worker.pool
    await asyncio.wait_for(_close(worker), 10)
    assert finish.cancelled() and not worker.finishing
    assert await store.redis.exists(job_key_prefix + KEYS.group_job_id("t:0:2", 0))  # never written: arq runs the job again later
    assert _connected(pool) == 0  # nothing left open by the close
