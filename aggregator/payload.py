"""Build the one JSON object uploaded per batch from a claimed batch's recorded state."""

from __future__ import annotations

from batchfleet.models import Claim, Summary, UploadPayload

__all__ = ["build_payload"]


def build_payload(claim: Claim) -> UploadPayload:
    """Results of ok stations in expected-station order; failed/empty/missing by station id."""
    results = []
    failed: dict[str, str] = {}
    empty: list[str] = []
    missing: list[str] = []
    for station in claim.stations:
        outcome = claim.outcomes.get(station)
        if outcome is None:
            missing.append(station)
        elif outcome.status == "ok" and outcome.result is not None:
            results.append(outcome.result)
        elif outcome.status == "empty":
            empty.append(station)
        else:
            failed[station] = outcome.error or "failed"
    meta = claim.meta
    return UploadPayload(
        batch_id=claim.batch_id,
        topic=claim.topic,
        created_at=int(meta["created_ms"]) / 1000,
        finalized_at=int(meta.get("finalized_ms", claim.now_ms)) / 1000,
        reason=claim.reason,  # type: ignore[arg-type]
        results=results,
        summary=Summary(
            expected=len(claim.stations),
            ok=len(results),
            failed=len(failed),
            empty=len(empty),
            missing=len(missing),
            late=int(meta.get("late", "0")),
        ),
        failed=failed,
        empty=empty,
        missing=missing,
    )
