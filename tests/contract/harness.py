"""The contract tests' table runner and the parser of the Lua scripts' headers.

Every ``batchfleet/lua/*.lua`` transition states its contract on top: KEYS, ARGV and the replies it
can give (``Returns {"kind", ...} or {"other", ...}``).  Each script has a module
``tests/contract/test_<script>.py`` with ``SCRIPT`` (its name) and ``CASES``: a table of rows, each
naming the documented branch it reaches.  A row arranges Redis state (``given``), calls the script
through its BatchStore method (``when``) and checks the reply and the Redis state left behind
(``then``).  The runner watches the script calls (redis-py's ``AsyncScript``) to check that ``when``
made exactly one call, to this script, and that its raw reply is of the row's branch.  A meta-test
(test_headers.py) checks that every documented branch has a row.

Only the replies, the BatchStore methods and the Redis state (key names from ``batchfleet.keys``)
are used: how the store registers or assembles its scripts is not part of the contract.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import batchfleet
from batchfleet.keys import Keys
from batchfleet.models import BatchSpec, Claim, Outcome, PartitionRange
from batchfleet.store import BatchStore

LUA_DIR = Path(batchfleet.__file__).with_name("lua")
TOPIC = "T"
BATCH = "T:0:10"  # the batch most cases use: topic T, partition 0, first offset 10
INC = "1ca27a7e"  # its incarnation (a dispatcher draws one per creation)
UNTAGGED = "list"  # the branch name of a reply without a kind tag (claim_jobs: {job_id, score, ...})

_HEADER = re.compile(r"--\[\[ (?P<name>\w+):(?P<body>.*?)\]\]", re.S)
_RETURNS = re.compile(r"^(?P<section>Returns\b.*?)(?=^Invariant:|\Z)", re.S | re.M)
_REPLY = re.compile(r"(?:\bReturns|\bor)\s+\{(?P<reply>[^{}]*)\}")
_TAG = re.compile(r'\s*"(?P<tag>\w+)"')


def header(source: str, name: str) -> str:
    """The ``--[[ name: ... ]]`` contract comment of script ``name`` within ``source``."""
    for match in _HEADER.finditer(source):
        if match["name"] == name:
            return match["body"]
    raise LookupError(f"no '--[[ {name}:' contract header")


def documented_branches(header_text: str) -> list[str]:
    """The reply kinds a header documents, in order: the first (quoted) element of each
    ``{...}`` after ``Returns`` or ``or``; a reply without a quoted tag is the branch ``list``."""
    section = _RETURNS.search(header_text)
    if section is None:
        return []
    branches = []
    for reply in _REPLY.finditer(section["section"]):
        tag = _TAG.match(reply["reply"])
        branches.append(tag["tag"] if tag else UNTAGGED)
    return branches


@functools.cache
def scripts() -> dict[str, list[str]]:
    """Every transition script (a .lua file whose header documents replies) -> its branches."""
    found: dict[str, list[str]] = {}
    for path in sorted(LUA_DIR.glob("*.lua")):
        source = path.read_text(encoding="utf-8")
        try:
            text = header(source, path.stem)
        except LookupError:
            continue  # a shared prelude or library: no contract of its own
        branches = documented_branches(text)
        if branches:
            found[path.stem] = branches
    return found


def script_name(source: str | bytes) -> str:
    """Which transition a registered script's source is (the name in its contract header)."""
    text = source.decode() if isinstance(source, bytes) else source
    names = [m["name"] for m in _HEADER.finditer(text) if m["name"] in scripts()]
    if len(names) != 1:
        raise LookupError(f"cannot tell which script this is (headers: {names})")
    return names[0]


def s(value: Any) -> str:
    """A Redis reply element as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def reply_kind(script: str, reply: Any) -> str:
    if scripts()[script] == [UNTAGGED]:
        return UNTAGGED if isinstance(reply, list) else f"not a list: {reply!r}"
    return s(reply[0])


# -- the table ----------------------------------------------------------------------------------


@dataclass
class ScriptCall:
    script: str
    keys: list[Any]
    args: list[Any]
    reply: Any


@dataclass
class Ctx:
    """One case's view of the session's Redis: the store, key names and the script calls seen."""

    store: BatchStore
    calls: list[ScriptCall] = field(default_factory=list)

    @property
    def keys(self) -> Keys:
        return self.store.keys

    @property
    def redis(self) -> Any:
        return self.store.redis

    # the shard-wide keys of the shard that BATCH (topic T, partition 0) belongs to
    @property
    def shard(self) -> int:
        return self.keys.shard_of_batch(BATCH)

    @property
    def due(self) -> str:
        return self.keys.due(self.shard)

    @property
    def leases(self) -> str:
        return self.keys.leases(self.shard)

    @property
    def ready(self) -> str:
        return self.keys.ready(self.shard)

    @property
    def dead(self) -> str:
        return self.keys.dead(self.shard)

    @property
    def recent(self) -> str:
        return self.keys.recent(self.shard)

    @property
    def batches(self) -> str:
        return self.keys.batches(self.shard)

    @property
    def fence(self) -> str:
        return self.keys.fence(self.shard)

    @property
    def offsets(self) -> str:
        return self.keys.offsets(self.shard)

    @property
    def rates(self) -> str:
        return self.keys.rates(self.shard)

    @property
    def quarantine(self) -> str:
        return self.keys.quarantine(self.shard)

    @property
    def queue(self) -> str:
        return self.keys.queue(self.shard)

    async def now_ms(self) -> int:
        return await self.store.server_time_ms()

    async def meta(self, batch_id: str) -> dict[str, str]:
        return await self.store.batch_meta(batch_id)

    async def hash(self, key: str) -> dict[str, str]:
        raw = await self.redis.hgetall(key)
        return {s(k): s(v) for k, v in raw.items()}

    async def zscore(self, key: str, member: str) -> float | None:
        score = await self.redis.zscore(key, member)
        return None if score is None else float(score)

    async def zset(self, key: str) -> dict[str, float]:
        return {s(m): float(score) for m, score in await self.redis.zrange(key, 0, -1, withscores=True)}

    async def stats(self) -> dict[str, int]:
        return await self.store.stats()

    async def pttl(self, key: str) -> int:
        return int(await self.redis.pttl(key))

    async def exists(self, key: str) -> bool:
        return bool(await self.redis.exists(key))


@dataclass
class Seen:
    """What one ``when`` did: the given's value, the method's result, the raw script reply, and the
    Redis server time just before and just after the call (bounds for the script's now_ms)."""

    given: Any
    result: Any
    reply: Any
    t0: int
    t1: int

    def kind(self) -> str:
        return s(self.reply[0])

    def text(self, i: int) -> str:
        return s(self.reply[i])

    def int(self, i: int) -> int:
        return int(self.reply[i])


Given = Callable[[Ctx], Awaitable[Any]]
When = Callable[[Ctx, Any], Awaitable[Any]]
Then = Callable[[Ctx, Seen], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    """One row: the branch it reaches, what it shows, and how."""

    branch: str
    name: str
    given: Given
    when: When
    then: Then

    @property
    def id(self) -> str:
        return f"{self.branch}:{self.name}"


async def run_case(ctx: Ctx, script: str, case: Case) -> None:
    given = await case.given(ctx)
    ctx.calls.clear()
    t0 = await ctx.now_ms()
    result = await case.when(ctx, given)
    t1 = await ctx.now_ms()
    made = [call.script for call in ctx.calls]
    assert made == [script], f"'when' must call {script} exactly once through the store; it called {made}"
    reply = ctx.calls[0].reply
    assert reply_kind(script, reply) == case.branch, f"reply {reply!r} is not of branch {case.branch!r}"
    await case.then(ctx, Seen(given, result, reply, t0, t1))


# -- arranging state ------------------------------------------------------------------------------


def counter(token: str | bytes) -> int:
    """The counter part of a fencing token ``COUNTER-NONCE`` (the nonce keeps tokens unique even when
    lost writes roll the counter back)."""
    return int(s(token).partition("-")[0])


def spec(
    *stations: str,
    batch_id: str = BATCH,
    timeout_s: float = 60.0,
    ranges: list[PartitionRange] | None = None,
    **options: Any,
) -> BatchSpec:
    """A batch of these stations (default s1, s2), one record each, covering offsets 10..11 of T:0."""
    names = stations or ("s1", "s2")
    options.setdefault("incarnation", INC)
    return BatchSpec(
        batch_id=batch_id,
        topic=TOPIC,
        stations={name: [{"stationId": name, "v": i}] for i, name in enumerate(names)},
        ranges=[PartitionRange(TOPIC, 0, 10, 12)] if ranges is None else ranges,
        timeout_s=timeout_s,
        retention_s=3600,
        **options,
    )


def outcome(status: str = "ok", **fields: Any) -> Outcome:
    return Outcome(status=status, result=fields or {"n": 1}, duration_ms=1.5, worker="w1")  # type: ignore[arg-type]


async def open_batch(ctx: Ctx, *stations: str, **options: Any) -> BatchSpec:
    batch = spec(*stations, **options)
    created, _ = await ctx.store.create_batch(batch)
    assert created
    return batch


async def record(ctx: Ctx, *stations: str, batch_id: str = BATCH) -> None:
    for station in stations:
        await ctx.store.record_outcome(batch_id, station, outcome())


async def claimed(ctx: Ctx, *stations: str, lease_ms: int = 60_000, **options: Any) -> Claim:
    """A batch past its deadline (timeout 0), claimed by us; ``options`` go to the spec."""
    await open_batch(ctx, *stations, timeout_s=0, **options)
    claim = await ctx.store.claim(BATCH, lease_ms)
    assert claim is not None
    return claim


async def taken_over(ctx: Ctx) -> Claim:
    """Our claim (token 1) whose lease ran out and that another aggregator re-claimed (token 2)."""
    ours = await claimed(ctx, lease_ms=0)
    theirs = await ctx.store.claim(BATCH, 60_000)
    assert theirs is not None and counter(theirs.token) > counter(ours.token)
    return ours


async def dead(ctx: Ctx) -> Claim:
    """A batch whose only upload attempt failed (max_attempts 1): dead-lettered, payload frozen."""
    claim = await claimed(ctx)
    assert await ctx.store.freeze_payload(claim, b'{"frozen": true}') is not None
    kind, _ = await ctx.store.fail_upload(claim, retry_delay_ms=0, max_attempts=1, error="HTTP 500")
    assert kind == "dead"
    return claim


async def uploaded(ctx: Ctx) -> Claim:
    claim = await claimed(ctx)
    assert await ctx.store.ack_upload(claim, retention_s=3600, upload_ms=1.0) is not None
    return claim


async def nothing(ctx: Ctx) -> None:
    return None
