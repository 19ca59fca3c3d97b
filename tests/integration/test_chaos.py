"""The chaos run (batchfleet/chaos.py) in its short version, plus the audit's own checks.

The long version is ``scripts/chaos --minutes 10``; this one runs the same code for ~50 s of chaos
(a few SIGKILLs of random roles, one redis-server kill -9 + restart with AOF) against the session
broker, then audits every produced record, the uploads and Redis memory.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchfleet_dev.chaos import ChaosConfig, Produced, Violations, account, batch_view, group_uploads, run_chaos
from batchfleet_dev.localstack import KafkaBroker


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_chaos_run_accounts_for_every_record(broker: KafkaBroker, tmp_path: Path) -> None:
    lines: list[str] = []
    cfg = ChaosConfig(
        duration_s=50,
        seed=11,
        workdir=tmp_path / "chaos",
        bootstrap=broker.bootstrap,
        kill_every_s=(4.0, 8.0),
        redis_events=2,  # a kill -9 and restart, then an AOF rollback under groups with slow stations
        settle_timeout_s=90,
        log=lines.append,
        strict=True,
    )
    report = await run_chaos(cfg)
    summary = report.table()
    assert report.records_unaccounted == 0, summary
    assert report.records_duplicated == 0 and report.records_phantom == 0, summary
    assert report.conflicting_repeats == 0, summary
    assert report.memory_growth <= cfg.memory_margin_bytes, summary
    # every other check too: settled, every created batch uploaded, no leftover keys, and (strict)
    # no role process exited by itself: a Redis restart must not take any of them down.
    assert report.ok, summary
    # the run really ran: messages, batches, faults, quarantines
    assert report.records_produced > 500 and report.batches_uploaded > 30, summary
    assert report.redis_faults == {"kill-restart": 1, "aof-rollback": 1}, summary
    assert report.redis_restarts == 2 and sum(report.kills.values()) >= 3, summary
    assert report.quarantined_found == report.quarantined_expected > 0, summary
    assert {"ok", "failed", "empty", "missing"} <= set(report.stations), summary


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_sentinel_soak_short_version_fails_over_and_accounts_for_every_record(broker: KafkaBroker, tmp_path: Path) -> None:
    """``scripts/chaos --soak`` in small: a primary, 2 replicas, 3 Sentinels; the primary SIGKILLed
    (Sentinel promotes a replica, the old primary comes back as one), a SENTINEL FAILOVER, a replica
    SIGKILLed, then the primary SIGKILLed for good (uploads go on with one replica where the WAIT asks
    for two), under role kills, with the whole audit and the soak's targets scaled down."""
    lines: list[str] = []
    cfg = ChaosConfig(
        duration_s=75,
        seed=23,
        workdir=tmp_path / "soak",
        bootstrap=broker.bootstrap,
        sentinel=True,
        kill_every_s=(3.0, 6.0),
        redis_events=4,
        lose_primary=True,
        settle_timeout_s=120,
        log=lines.append,
        strict=True,
        targets={"kills": 5, "redis_restarts": 2, "failovers": 2},
    )
    report = await run_chaos(cfg)
    summary = report.table() + "\n" + "\n".join(lines)
    assert report.conflicting_repeats == 0, summary  # the upload WAIT: a failover never yields a second body
    assert report.records_unaccounted == 0 and report.records_duplicated == 0, summary
    assert report.redis_problems == [], summary
    assert report.ok, summary  # settled, every batch uploaded, no leftovers, memory, targets, no role crashed
    assert report.redis_faults == dict.fromkeys(("primary-kill", "sentinel-failover", "replica-kill", "primary-lost"), 1), summary
    assert report.failovers == 3 and report.redis_restarts == 2, summary
    assert report.batches_uploaded > 30 and report.quarantined_found == report.quarantined_expected > 0, summary
    print("\n" + report.table())


# -- the audit itself: it must catch what it claims to catch ------------------------------------
def _msg(seq: int, stations: list[str], topic: str = "T", partition: int = 0, offset: int | None = None) -> Produced:
    records = [(sid, f"{seq}.{i}") for i, sid in enumerate([f"M-{seq}", *stations])]
    return Produced(seq, topic, partition, seq if offset is None else offset, records)


def _payload(batch_id: str, msgs: list[Produced], *, failed: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> bytes:
    by_station: dict[str, list[str]] = {}
    for m in msgs:
        for sid, rid in m.records:
            by_station.setdefault(sid, []).append(rid)
    results = [{"stationId": s, "rids": r} for s, r in by_station.items() if s not in failed and s not in drop]
    body = {
        "batch_id": batch_id,
        "topic": "T",
        "results": results,
        "failed": {s: "ValueError: x" for s in failed},
        "empty": [],
        "missing": [],
        "summary": {"expected": len(results) + len(failed)},
    }
    return orjson.dumps(body)


def _audit(produced: list[Produced], raw: bytes, quarantined: frozenset[str] = frozenset()) -> Violations:
    bad = Violations()
    uploads = group_uploads(raw, bad)
    batches = {bid: batch_view(orjson.loads(body), bad) for bid, body in uploads.bodies.items()}
    account(produced, batches, set(quarantined), bad)
    return bad


def test_audit_passes_a_clean_run_with_identical_repeats_and_merged_stations() -> None:
    m0, m1, m2 = _msg(0, ["S001", "S002"]), _msg(1, ["S001"]), _msg(2, ["S003"])
    bad = Violations()
    raw = b"\n".join([_payload("T:0:0", [m0, m1], failed=("S002",)), _payload("T:0:2", [m2]), _payload("T:0:2", [m2])])
    uploads = group_uploads(raw, bad)
    assert uploads.repeats == 1 and uploads.conflicting == 0
    batches = {bid: batch_view(orjson.loads(body), bad) for bid, body in uploads.bodies.items()}
    acc = account([m0, m1, m2], batches, set(), bad)
    assert len(bad) == 0, bad.listed
    assert acc.unaccounted == 0 and acc.categories == {"results": 6, "failed": 1}


def test_audit_catches_a_lost_message_a_record_twice_and_a_conflicting_repeat() -> None:
    m0, m1 = _msg(0, ["S001"]), _msg(1, ["S002"])
    lost = _audit([m0, m1], _payload("T:0:0", [m0]))
    assert lost.counts["message in no batch"] == 1 and lost.counts["unaccounted record"] == 2

    twice = _audit([m0, m1], b"\n".join([_payload("T:0:0", [m0]), _payload("T:0:1", [m0, m1])]))
    assert twice.counts["message in several batches"] == 1 and twice.counts["record accounted twice"] == 2

    conflicting = _audit([m0], b"\n".join([_payload("T:0:0", [m0]), _payload("T:0:0", [m0], failed=("S001",))]))
    assert conflicting.counts["conflicting repeat"] == 1

    dropped = _audit([m0], _payload("T:0:0", [m0], drop=("S001",)))  # a station neither in results nor listed
    assert dropped.counts["expected stations mismatch"] == 1 and dropped.counts["unaccounted record"] == 1


def test_audit_requires_malformed_messages_in_quarantine() -> None:
    bad_msg = Produced(5, "T", 1, 7, [("S001", "5.0")], malformed="truncated")
    assert _audit([bad_msg], b"").counts["malformed message not quarantined"] == 1
    assert len(_audit([bad_msg], b"", frozenset({"T:1:7"}))) == 0
