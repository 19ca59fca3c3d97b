"""The key layout: shards, hash tags, one slot per transition, fleet isolation (no servers)."""

from __future__ import annotations

from collections import Counter

import pytest
from redis.crc import key_slot

from batchfleet.keys import SLOTS, Keys, batch_id_for, message_id_for, shard_of, shard_tag

BATCH_IDS = [
    batch_id_for("SCHEDULE-STATION-REALTIME-DATA", 0, 12345),
    batch_id_for("t.with.dots_and-dashes", 17, 0),
    "T:3:9",
]
STATION_IDS = ["s1", "Zürich-Hbf", "with:colon", "brace{inside}", "}lead", "{", "東京"]


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_batch_id_format() -> None:
    assert batch_id_for("SCHEDULE-STATION-REALTIME-DATA", 0, 12345) == "SCHEDULE-STATION-REALTIME-DATA:0:12345"
    assert message_id_for("T", 2, 7) == "T:2:7"


@pytest.mark.parametrize("shards", [1, 3, 16])
@pytest.mark.parametrize("prefix", ["bf", "my.prefix-2"])
@pytest.mark.parametrize("batch_id", BATCH_IDS)
def test_every_key_a_transition_touches_is_in_the_batch_shards_slot(batch_id: str, prefix: str, shards: int) -> None:
    """create/record/claim/ack/fail/replay scripts touch the batch's keys, its jobs and its shard's
    indexes: all in one slot, so each runs on a Redis Cluster."""
    keys = Keys(prefix, shards)
    shard = keys.shard_of_batch(batch_id)
    touched = [
        *keys.batch_keys(batch_id),
        *(keys.job(batch_id, s, inc) for s in STATION_IDS for inc in ("", "0a1b2c3d")),
        *(keys.in_progress(keys.job_id(batch_id, s, "0a1b2c3d")) for s in STATION_IDS),
        keys.group_job(batch_id, 3, "0a1b2c3d"),
        *(f(shard) for f in (keys.due, keys.leases, keys.ready, keys.dead, keys.recent, keys.batches, keys.fence)),
        *(f(shard) for f in (keys.offsets, keys.stats, keys.quarantine, keys.queue)),
        keys.quarantined(batch_id),  # a message id has the same form as a batch id
    ]
    assert {slot(k) for k in touched} == {slot(keys.queue(shard))}
    assert len(set(keys.batch_keys(batch_id))) == 5


@pytest.mark.parametrize("station_id", STATION_IDS)
def test_a_job_id_names_its_batch_station_and_shard(station_id: str) -> None:
    keys = Keys("bf", 8)
    for batch_id in BATCH_IDS:
        for incarnation in ("", "0a1b2c3d"):
            job_id = keys.job_id(batch_id, station_id, incarnation)
            assert keys.parse_job_id(job_id) == (batch_id, station_id, incarnation)
            assert keys.shard_of_job(job_id) == keys.shard_of_batch(batch_id)
            assert keys.job(batch_id, station_id, incarnation) == "arq:job:" + job_id


def test_a_group_job_id_names_its_batch_incarnation_and_shard() -> None:
    keys = Keys("bf", 8)
    for batch_id in BATCH_IDS:
        for incarnation in ("", "0a1b2c3d"):
            job_id = keys.group_job_id(batch_id, 12, incarnation)
            assert keys.parse_group_job(job_id) == (batch_id, incarnation)
            assert keys.batch_of_group_job(job_id) == batch_id
            assert keys.shard_of_job(job_id) == keys.shard_of_batch(batch_id)


def test_incarnations_of_one_batch_share_no_job_id() -> None:
    """A batch created again after Redis lost it gets jobs of its own: the lost one's jobs can never
    finish, delete or retry them."""
    keys = Keys("bf", 8)
    bid = BATCH_IDS[0]
    assert keys.group_job_id(bid, 0, "00000001") != keys.group_job_id(bid, 0, "00000002")
    assert keys.job_id(bid, "s1", "00000001") != keys.job_id(bid, "s1", "00000002")


def test_job_ids_are_distinct_per_station_and_batch() -> None:
    keys = Keys()
    ids = {keys.job_id(b, s, inc) for b in BATCH_IDS for s in STATION_IDS for inc in ("", "0a1b2c3d")}
    assert len(ids) == len(BATCH_IDS) * len(STATION_IDS) * 2


def test_two_fleets_share_no_key_and_no_job_id() -> None:
    """Every key and arq job id carries the fleet's prefix: two fleets on one Redis never meet."""
    a, b = Keys("fleet-a", 4), Keys("fleet-b", 4)

    def names(k: Keys) -> set[str]:
        out = {k.layout, k.procs, k.proc("worker:h:1")}
        for bid in BATCH_IDS:
            out |= {*k.batch_keys(bid), k.quarantined(bid), *(k.job(bid, s) for s in STATION_IDS)}
        for shard in range(k.shards):
            out |= {f(shard) for f in (k.due, k.leases, k.ready, k.dead, k.recent, k.batches, k.fence, k.offsets)}
            out |= {k.stats(shard), k.quarantine(shard), k.queue(shard)}
        return out

    assert not names(a) & names(b)
    assert all("fleet-a" in n for n in names(a)) and all("fleet-b" in n for n in names(b))


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 12, 16, 64])
def test_shard_tags_sit_at_evenly_spaced_slots(shards: int) -> None:
    """Tag K's slot is in the K-th N-th of the slot space: with primaries owning equal slot ranges
    (redis-cli --cluster create), the shards spread over them as evenly as N allows."""
    for shard in range(shards):
        tag_slot = slot("{" + shard_tag("bf", shard, shards) + "}")
        assert shard * SLOTS // shards <= tag_slot < (shard + 1) * SLOTS // shards
    primaries = 3
    owners = Counter(min(slot(Keys("bf", shards).queue(k)) * primaries // SLOTS, primaries - 1) for k in range(shards))
    assert max(owners.values()) - min(owners.values(), default=0) <= 1 or shards < primaries


@pytest.mark.parametrize(("partitions", "shards"), [(12, 3), (12, 12), (24, 16), (7, 4)])
def test_partitions_spread_evenly_over_shards(partitions: int, shards: int) -> None:
    per_shard = Counter(shard_of("STATION-DATA", p, shards) for p in range(partitions))
    assert max(per_shard.values()) - min(per_shard.values()) <= 1
    assert len(per_shard) == min(partitions, shards)


def test_the_partition_mapping_is_stable() -> None:
    """Pinned: a change here moves every partition's offsets and must bump the layout scheme."""
    assert [shard_of("STATION-DATA", p, 4) for p in range(6)] == [1, 2, 3, 0, 1, 2]
    assert [shard_tag("bf", k, 4) for k in range(4)] == ["bf:s0.0", "bf:s1.2", "bf:s2.0", "bf:s3.2"]


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="shards"):
        Keys("bf", 0)
    with pytest.raises(ValueError, match="braces"):
        Keys("b{f}", 1)
