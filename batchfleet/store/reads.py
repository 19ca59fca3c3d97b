"""Operator reads: what ``status``, ``inspect`` and the web console show.  Nothing here writes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from batchfleet.models import Outcome
from batchfleet.store.base import StoreBase, aw, text
from batchfleet.store.scripts import RATE_OUTCOMES, RATE_SLOTS

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
        """The counters, summed over the shards."""
        total: Counter[str] = Counter()
        for raw in await self.each_shard(lambda pipe, shard: pipe.hgetall(self.keys.stats(shard))):
            total.update({text(name): int(v) for name, v in raw.items()})
        return dict(total)

    async def shard_summary(self) -> list[dict[str, Any]]:
        """Per shard: its hash tag (the first part of its keys), open batches and queued station jobs."""

        def add(pipe: Any, shard: int) -> None:
            pipe.zcard(self.keys.due(shard))
            pipe.zcard(self.keys.leases(shard))
            pipe.zcard(self.keys.queue(shard))

        sizes = [int(n) for n in await self.each_shard(add)]
        return [
            {"shard": k, "tag": self.keys.tag(k), "open": sizes[3 * k] + sizes[3 * k + 1], "queued": sizes[3 * k + 2]}
            for k in self.shards
        ]

    async def open_batch_ids(self, limit: int = 50) -> list[tuple[str, int]]:
        """(batch id, due ms) of batches not yet uploaded, soonest first (due, then leased)."""

        def add(pipe: Any, shard: int) -> None:
            pipe.zrange(self.keys.due(shard), 0, limit - 1, withscores=True)
            pipe.zrange(self.keys.leases(shard), 0, limit - 1, withscores=True)

        replies = await self.each_shard(add)
        due = _merged(replies[0::2], limit, newest_first=False)
        leased = _merged(replies[1::2], limit, newest_first=False)
        return [(m, int(s)) for m, s in due + leased]

    async def recent_batch_ids(self, limit: int = 20) -> list[str]:
        """The most recently finished batch ids of every shard, interleaved newest first."""
        lists = await self.each_shard(lambda pipe, shard: pipe.lrange(self.keys.recent(shard), 0, limit - 1))
        interleaved = [text(ids[i]) for i in range(limit) for ids in lists if i < len(ids)]
        return interleaved[:limit]

    async def dead_batch_ids(self) -> list[str]:
        """Dead-lettered batch ids, oldest first."""
        replies = await self.each_shard(lambda pipe, shard: pipe.zrange(self.keys.dead(shard), 0, -1, withscores=True))
        return [m for m, _ in _merged(replies, None, newest_first=False)]

    async def quarantined(self, limit: int = 100) -> list[dict[str, bytes]]:
        """The newest quarantined messages of all shards."""
        replies = await self.each_shard(
            lambda pipe, shard: pipe.zrevrange(self.keys.quarantine(shard), 0, limit - 1, withscores=True)
        )
        ids = [m for m, _ in _merged(replies, limit, newest_first=True)]
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
        """Sizes of the indexes, summed over the shards: open (due + leased), dead, quarantined, queued."""
        k = self.keys

        def add(pipe: Any, shard: int) -> None:
            for key in (k.due(shard), k.leases(shard), k.dead(shard), k.quarantine(shard), k.queue(shard)):
                pipe.zcard(key)

        sizes = [int(n) for n in await self.each_shard(add)]
        due, leased, dead, quarantined, queued = (sum(sizes[i::5]) for i in range(5))
        return {
            "open": int(due) + int(leased),
            "leased": int(leased),
            "dead": int(dead),
            "quarantined": int(quarantined),
            "queued": int(queued),
        }

    async def batch_ids(self, limit: int) -> list[str]:
        """Batch ids of all shards, newest first (ids of expired batches may still be listed: callers drop them)."""
        replies = await self.each_shard(lambda pipe, shard: pipe.zrevrange(self.keys.batches(shard), 0, limit - 1, withscores=True))
        return [m for m, _ in _merged(replies, limit, newest_first=True)]

    async def quarantined_entry(self, message_id: str) -> dict[str, bytes] | None:
        raw = await aw(self.redis.hgetall(self.keys.quarantined(message_id)))
        return {text(name): v for name, v in raw.items()} if raw else None

    async def mark_redispatched(self, message_id: str, how: str) -> None:
        await aw(self.redis.hset(self.keys.quarantined(message_id), mapping={"redispatched": how}))

    async def queue_depth(self) -> int:
        """Station jobs queued, all shards."""
        return sum(int(n) for n in await self.each_shard(lambda pipe, shard: pipe.zcard(self.keys.queue(shard))))

    # -- the web console: bounded, index-driven reads, never KEYS --------------------------------
    async def rate_ring(self) -> dict[str, int]:
        """The ``rates`` rings of every shard merged into one: ``POS:t`` / ``POS:OUTCOME`` -> int (see
        ack_upload.lua); a slot's counts are summed over the shards whose ring holds that slot."""
        by_slot: dict[int, Counter[str]] = {}
        for raw in await self.each_shard(lambda pipe, shard: pipe.hgetall(self.keys.rates(shard))):
            ring = {text(name): int(v) for name, v in raw.items()}
            for pos in range(RATE_SLOTS):
                slot = ring.get(f"{pos}:t")
                if slot is not None:
                    counts = by_slot.setdefault(slot, Counter())
                    counts.update({f: ring.get(f"{pos}:{f}", 0) for f in (*RATE_OUTCOMES, "batches")})
        merged: dict[str, int] = {}
        for slot in sorted(by_slot):  # a newer slot at the same position replaces an older one
            pos = slot % RATE_SLOTS
            merged[f"{pos}:t"] = slot
            merged.update({f"{pos}:{f}": n for f, n in by_slot[slot].items()})
        return merged

    async def batch_index_page(self, *, before: tuple[int, str] | None, count: int) -> list[tuple[str, int]]:
        """(batch id, created ms) from the batch indexes of all shards, newest first, strictly after the
        cursor ``before`` = (created ms, batch id) of the last row of the previous page."""
        return await self._merged_pages(self.keys.batches, before, count)

    async def dead_index_page(self, *, before: tuple[int, str] | None, count: int) -> list[tuple[str, int]]:
        """(batch id, dead ms) from the dead-letter sets, newest first, after the cursor ``before``."""
        return await self._merged_pages(self.keys.dead, before, count)

    async def _merged_pages(self, key: Callable[[int], str], before: tuple[int, str] | None, count: int) -> list[tuple[str, int]]:
        """Each shard's next page, merged: the newest ``count`` rows after the cursor over all shards."""
        rows: list[tuple[str, int]] = []
        for shard in self.shards:
            rows += await self._zpage(key(shard), before, count)
        rows.sort(key=lambda r: (r[1], r[0]), reverse=True)
        return rows[:count]

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
        return sum(int(n) for n in await self.each_shard(lambda pipe, shard: pipe.zcard(self.keys.dead(shard))))

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
        """Quarantined messages of all shards, newest first, from position ``offset``."""
        end = offset + count - 1
        replies = await self.each_shard(lambda pipe, shard: pipe.zrevrange(self.keys.quarantine(shard), 0, end, withscores=True))
        ids = [m for m, _ in _merged(replies, offset + count, newest_first=True)][offset:]
        async with self.redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.hgetall(self.keys.quarantined(mid))
            raws = await pipe.execute() if ids else []
        rows = [({text(name): v for name, v in raw.items()}, mid) for mid, raw in zip(ids, raws, strict=True) if raw]
        return [row | {"id": mid.encode()} for row, mid in rows]

    async def ping(self) -> bool:
        return bool(await aw(self.redis.ping()))


def _merged(replies: list[list[tuple[bytes, float]]], limit: int | None, *, newest_first: bool) -> list[tuple[str, float]]:
    """Per-shard (member, score) lists merged by score, at most ``limit``."""
    merged = sorted(((text(m), s) for reply in replies for m, s in reply), key=lambda ms: ms[1], reverse=newest_first)
    return merged if limit is None else merged[:limit]
