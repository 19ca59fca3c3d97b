"""Operator reads: what ``status``, ``inspect`` and the web console show.  Nothing here writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchfleet.models import Outcome
from batchfleet.store.base import StoreBase, aw, text

__all__ = ["OperatorReads"]


class OperatorReads(StoreBase):
    """Batches, outcomes, indexes and counters, read for people."""

    async def batch_meta(self, batch_id: str) -> dict[str, str]:
        raw = await aw(self.redis.hgetall(self.keys.batch(batch_id)))
        return {text(name): text(v) for name, v in raw.items()}

    async def batch_ttl_s(self, batch_id: str) -> int:
        """Seconds until the batch's keys expire; -1 while it has no TTL (not yet uploaded, or dead)."""
        return int(await aw(self.redis.ttl(self.keys.batch(batch_id))))

    async def batch_outcomes(self, batch_id: str) -> dict[str, Outcome]:
        raw = await aw(self.redis.hgetall(self.keys.outcomes(batch_id)))
        return {text(name): Outcome.from_json(v) for name, v in raw.items()}

    async def late_outcomes(self, batch_id: str) -> dict[str, Outcome]:
        raw = await aw(self.redis.hgetall(self.keys.late(batch_id)))
        return {text(name): Outcome.from_json(v) for name, v in raw.items()}

    async def stats(self) -> dict[str, int]:
        raw = await aw(self.redis.hgetall(self.keys.stats))
        return {text(name): int(v) for name, v in raw.items()}

    async def open_batch_ids(self, limit: int = 50) -> list[tuple[str, int]]:
        """(batch id, due ms) of batches not yet uploaded, soonest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.due, 0, limit - 1, withscores=True)
            pipe.zrange(self.keys.leases, 0, limit - 1, withscores=True)
            due, leased = await pipe.execute()
        return [(text(m), int(s)) for m, s in due + leased]

    async def recent_batch_ids(self, limit: int = 20) -> list[str]:
        return [text(b) for b in await aw(self.redis.lrange(self.keys.recent, 0, limit - 1))]

    async def dead_batch_ids(self) -> list[str]:
        return [text(b) for b in await aw(self.redis.zrange(self.keys.dead, 0, -1))]

    async def quarantined(self, limit: int = 100) -> list[dict[str, bytes]]:
        ids = [text(m) for m in await aw(self.redis.zrevrange(self.keys.quarantine, 0, limit - 1))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.hgetall(self.keys.quarantined(mid))
            raws = await pipe.execute() if ids else []
        return [
            {text(name): v for name, v in raw.items()} | {"id": mid.encode()} for mid, raw in zip(ids, raws, strict=True) if raw
        ]

    async def progress(self, batch_ids: list[str]) -> list[dict[str, Any]]:
        """Per batch: meta fields used by progress views, plus ``done`` (outcomes so far)."""
        fields = [
            "topic",
            "state",
            "expected",
            "created_ms",
            "deadline_ms",
            "finalized_ms",
            "uploaded_ms",
            "reason",
            "late",
            "upload_failures",
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in batch_ids:
                pipe.hmget(self.keys.batch(bid), fields)
                pipe.hlen(self.keys.outcomes(bid))
            replies = await pipe.execute()
        rows: list[dict[str, Any]] = []
        for i, bid in enumerate(batch_ids):
            values, done = replies[2 * i], replies[2 * i + 1]
            if values[0] is None:
                continue
            row: dict[str, Any] = {"batch_id": bid, "done": int(done)}
            row.update({f: text(v) for f, v in zip(fields, values, strict=True) if v is not None})
            rows.append(row)
        return rows

    async def payload(self, batch_id: str) -> bytes | None:
        value = await aw(self.redis.get(self.keys.payload(batch_id)))
        return bytes(value) if value is not None else None

    async def counts(self) -> dict[str, int]:
        """Sizes of the fleet-wide indexes: open (due + leased), dead-lettered, quarantined, queued."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in (self.keys.due, self.keys.leases, self.keys.dead, self.keys.quarantine, self.queue_name):
                pipe.zcard(key)
            due, leased, dead, quarantined, queued = await pipe.execute()
        return {
            "open": int(due) + int(leased),
            "leased": int(leased),
            "dead": int(dead),
            "quarantined": int(quarantined),
            "queued": int(queued),
        }

    async def batch_ids(self, limit: int) -> list[str]:
        """Batch ids, newest first (ids of expired batches may still be listed: callers drop them)."""
        return [text(b) for b in await aw(self.redis.zrevrange(self.keys.batches, 0, limit - 1))]

    async def quarantined_entry(self, message_id: str) -> dict[str, bytes] | None:
        raw = await aw(self.redis.hgetall(self.keys.quarantined(message_id)))
        return {text(name): v for name, v in raw.items()} if raw else None

    async def mark_redispatched(self, message_id: str, how: str) -> None:
        await aw(self.redis.hset(self.keys.quarantined(message_id), mapping={"redispatched": how}))

    async def queue_depth(self) -> int:
        return int(await aw(self.redis.zcard(self.queue_name)))

    # -- the web console: bounded, index-driven reads, never KEYS --------------------------------
    async def rate_ring(self) -> dict[str, int]:
        """The raw ``bf:rates`` ring: ``POS:t`` / ``POS:OUTCOME`` -> int (see ack_upload.lua)."""
        raw = await aw(self.redis.hgetall(self.keys.rates))
        return {text(name): int(v) for name, v in raw.items()}

    async def batch_index_page(self, *, before: tuple[int, str] | None, count: int) -> list[tuple[str, int]]:
        """(batch id, created ms) from the batch index, newest first, strictly after the cursor
        ``before`` = (created ms, batch id) of the last row of the previous page."""
        return await self._zpage(self.keys.batches, before, count)

    async def dead_index_page(self, *, before: tuple[int, str] | None, count: int) -> list[tuple[str, int]]:
        """(batch id, dead ms) from the dead-letter set, newest first, after the cursor ``before``."""
        return await self._zpage(self.keys.dead, before, count)

    async def _zpage(self, key: str, before: tuple[int, str] | None, count: int) -> list[tuple[str, int]]:
        top: int | str = "+inf" if before is None else before[0]

        def past(row: tuple[str, int]) -> bool:  # equal scores come in reverse lexical order
            return before is None or row[1] < before[0] or (row[1] == before[0] and row[0] < before[1])

        num = count
        while True:
            got = await aw(self.redis.zrevrangebyscore(key, top, "-inf", start=0, num=num, withscores=True))
            page = [(text(m), int(sc)) for m, sc in got]
            fresh = [r for r in page if past(r)]
            if len(fresh) >= count or len(page) < num:
                return fresh[:count]
            num += len(page) - len(fresh)  # rows tied with the cursor that sort before it

    async def dead_count(self) -> int:
        return int(await aw(self.redis.zcard(self.keys.dead)))

    async def batch_metas(self, batch_ids: Sequence[str], fields: Sequence[str]) -> list[dict[str, str] | None]:
        """Selected meta fields of many batches in one round trip (None: the batch has expired)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in batch_ids:
                pipe.exists(self.keys.batch(bid))
                pipe.hmget(self.keys.batch(bid), list(fields))
            replies = await pipe.execute() if batch_ids else []
        out: list[dict[str, str] | None] = []
        for i in range(len(batch_ids)):
            exists, values = replies[2 * i], replies[2 * i + 1]
            out.append({f: text(v) for f, v in zip(fields, values, strict=True) if v is not None} if exists else None)
        return out

    async def quarantined_page(self, *, offset: int, count: int) -> list[dict[str, bytes]]:
        """Quarantined messages, newest first, from position ``offset`` of the quarantine index."""
        ids = [text(m) for m in await aw(self.redis.zrevrange(self.keys.quarantine, offset, offset + count - 1))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.hgetall(self.keys.quarantined(mid))
            raws = await pipe.execute() if ids else []
        return [
            {text(name): v for name, v in raw.items()} | {"id": mid.encode()} for mid, raw in zip(ids, raws, strict=True) if raw
        ]

    async def ping(self) -> bool:
        return bool(await aw(self.redis.ping()))
