"""``/api``: the console's JSON API, the same data as the CLI's ``--json`` (OpenAPI at /api/openapi.json)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from batchfleet import ops
from batchfleet.errors import ConfigError
from batchfleet.settings import Settings
from batchfleet.store import BatchStore
from batchfleet.web.security import Guard, client_of
from batchfleet.web.state import guard_of, is_batch_id, store_of

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api")
_bearer = HTTPBearer(auto_error=False, description="BATCHFLEET_WEB_TOKEN (actions only; reads need no token)")

JSON = dict[str, Any]
BatchId = Annotated[str, Path(description="batch id `TOPIC:PARTITION:OFFSET`", examples=["STATION-DATA:0:42"])]
MessageId = Annotated[str, Path(description="quarantined message id `TOPIC:PARTITION:OFFSET`")]


StoreDep = Annotated[BatchStore, Depends(store_of)]


def _known_form(value: str, what: str) -> str:
    """A malformed id names nothing: 404 (not a 500 from deriving its keys)."""
    if not is_batch_id(value):
        raise HTTPException(404, f"{value!r} is not a {what} id (TOPIC:PARTITION:OFFSET)")
    return value


def batch_id_of(batch_id: BatchId) -> str:
    return _known_form(batch_id, "batch")


def message_id_of(message_id: MessageId) -> str:
    return _known_form(message_id, "message")


CheckedBatchId = Annotated[str, Depends(batch_id_of)]
CheckedMessageId = Annotated[str, Depends(message_id_of)]


async def require_token(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Actions: ``Authorization: Bearer BATCHFLEET_WEB_TOKEN``; refused on a read-only console."""
    guard = guard_of(request)
    if not guard.writable:
        raise HTTPException(403, "read-only console: BATCHFLEET_WEB_TOKEN is not set")
    if not Guard.same_origin(request, required=False):
        raise HTTPException(403, "cross-origin request refused")
    if credentials is None or not guard.check_token(credentials.credentials):
        raise HTTPException(401, "this action needs the console token (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"})


class ReplayResult(BaseModel):
    batch_id: str
    replayed: bool = Field(description="true: queued for upload again; false: it was not dead-lettered")
    state: str = Field(description="the state it was in")


class RedispatchRequest(BaseModel):
    value: str | None = Field(
        default=None, description="the corrected message (UTF-8 text); omit to send the stored value unchanged"
    )


class RedispatchResult(BaseModel):
    message_id: str
    redispatched_as: str = Field(description="the new message's `TOPIC:PARTITION:OFFSET`")


# -- reads -----------------------------------------------------------------------------------------
@router.get("/status", summary="Fleet status", tags=["overview"])
async def status(store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000, description="open batches listed")] = 20) -> JSON:
    """Open batches with progress, index sizes, live processes, Kafka lag and counters:
    the same data as `batchfleet status --json`."""
    return await ops.status_data(store, limit=limit)


@router.get("/rates", summary="Uploaded stations per 10 s, last hour", tags=["overview"])
async def rates(store: StoreDep) -> JSON:
    """Stations of uploaded batches per 10-second slot of the last hour (Redis time), by outcome
    (`ok`, `failed`, `empty`, `missing`) plus uploads (`batches`), oldest slot first; slot *i* starts at
    `t0_ms + i * slot_ms`.  Written by the aggregators' ack (one ring hash, `bf:rates`)."""
    return await ops.rates(store)


@router.get("/overview", summary="Everything the overview page shows", tags=["overview"])
async def overview(store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JSON:
    """`/api/status` plus `rates` (as `/api/rates`)."""
    return await ops.overview_data(store, limit=limit)


@router.get(
    "/overview/stream",
    summary="The overview as server-sent events",
    tags=["overview"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "`event: overview` with `/api/overview` as data"}},
)
async def overview_stream(
    request: Request, store: StoreDep, interval_s: Annotated[float, Query(ge=0.5, le=60)] = 2.0
) -> StreamingResponse:
    """An `event: overview` every `interval_s` seconds whose data is `/api/overview`; while Redis is
    unreachable, an `event: problem` instead (the stream stays open).  A client may hold 4 streams
    at once (429 beyond), the console 64 in all (503 beyond)."""
    slots, client = guard_of(request).streams, client_of(request)
    refused = slots.take(client)
    if refused == 429:
        raise HTTPException(429, "too many live streams from this client", {"Retry-After": "10"})
    if refused == 503:
        raise HTTPException(503, "too many live streams open on this console", {"Retry-After": "10"})

    async def events() -> AsyncIterator[bytes]:
        while not await request.is_disconnected():
            try:
                yield b"event: overview\ndata: " + orjson.dumps(await ops.overview_data(store)) + b"\n\n"
            except Exception as exc:
                log.warning("overview stream: %s", exc)
                yield b"event: problem\ndata: " + orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}) + b"\n\n"
            await asyncio.sleep(interval_s)

    return _SlotStream(
        events(),
        release=lambda: slots.give_back(client),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


class _SlotStream(StreamingResponse):
    """A stream that gives its slot back however it ends (finished, client gone, cancelled, or
    never started because the client left first)."""

    def __init__(self, content: AsyncIterator[bytes], *, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


@router.get("/batches", summary="Batches, newest first, filtered and paginated", tags=["batches"])
async def batches(
    store: StoreDep,
    state: Annotated[Literal["open", "finalized", "uploaded", "dead"] | None, Query()] = None,
    topic: Annotated[str | None, Query(max_length=249)] = None,
    q: Annotated[str | None, Query(max_length=300, description="batch id substring (case-insensitive)")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JSON:
    """`rows` are those of `batchfleet inspect batches --json`.  Each call reads at most 5,000 entries of
    the batch index from `cursor` on (never `KEYS`); `next_cursor` continues the listing (null at its
    end), `scanned` says how many index entries this page read."""
    try:
        return await ops.batch_page(store, state=state, topic=topic or None, q=q or None, cursor=cursor, limit=limit)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.get("/batches/{batch_id}", summary="One batch and every expected station", tags=["batches"])
async def batch(store: StoreDep, batch_id: CheckedBatchId) -> JSON:
    """The same data as `batchfleet inspect batch ID --json`: meta (state, reason, timestamps,
    `uploaded_by`, `claims`, `upload_failures`, `last_error`, ...), TTL, and per expected station its
    outcome, error, duration, attempt and worker (`missing` when it has not reported)."""
    data = await ops.batch_detail(store, batch_id)
    if data is None:
        raise HTTPException(404, f"no batch {batch_id} (never created, or expired after its retention)")
    return data


@router.get(
    "/batches/{batch_id}/payload",
    summary="The frozen upload payload",
    tags=["batches"],
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "exactly the bytes every upload attempt sends"}},
)
async def payload(store: StoreDep, batch_id: CheckedBatchId) -> Response:
    """Frozen at the first upload attempt; 404 before that (or after the batch expired)."""
    body = await store.payload(batch_id)
    if body is None:
        raise HTTPException(404, f"batch {batch_id} has no frozen payload (not claimed for upload yet, or expired)")
    return Response(body, media_type="application/json")


@router.get("/dead", summary="Dead-lettered batches", tags=["dead letters"])
async def dead(
    store: StoreDep,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSON:
    """`rows` as `batchfleet inspect dead --json` (last upload error per batch), most recent first;
    `total` is the size of the dead-letter set."""
    try:
        return await ops.dead_page(store, cursor=cursor, limit=limit)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.get("/quarantine", summary="Quarantined messages", tags=["quarantine"])
async def quarantine(
    store: StoreDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JSON]:
    """Newest first, as `batchfleet inspect quarantine --json`: reason, topic, partition, offset, size and
    the first 500 characters of the value."""
    return await ops.quarantine_page(store, offset=offset, limit=limit)


@router.get("/quarantine/{message_id}", summary="One quarantined message", tags=["quarantine"])
async def quarantined(store: StoreDep, message_id: CheckedMessageId) -> JSON:
    """With the whole stored value (the first 64 KiB of the message); `truncated` when the message was longer."""
    entry = await ops.quarantine_entry(store, message_id)
    if entry is None:
        raise HTTPException(404, f"no quarantined message {message_id}")
    return entry


# -- actions (need the token) ----------------------------------------------------------------------
@router.post(
    "/dead/{batch_id}/replay",
    summary="Replay one dead-lettered batch",
    tags=["dead letters"],
    dependencies=[Depends(require_token)],
)
async def replay(request: Request, batch_id: CheckedBatchId) -> ReplayResult:
    """Gives the batch a fresh upload budget; it re-sends its frozen body with the same `Idempotency-Key`
    (as `batchfleet replay ID`).  A batch that is not dead-lettered is left alone (`replayed: false`)."""
    [(bid, ok, state)] = await ops.replay(_settings(request), [batch_id], False)
    return ReplayResult(batch_id=bid, replayed=ok, state=state)


@router.post(
    "/dead/replay-all", summary="Replay every dead-lettered batch", tags=["dead letters"], dependencies=[Depends(require_token)]
)
async def replay_all(request: Request) -> list[ReplayResult]:
    """As `batchfleet replay --all`."""
    return [ReplayResult(batch_id=b, replayed=ok, state=s) for b, ok, s in await ops.replay(_settings(request), [], True)]


@router.post(
    "/quarantine/{message_id}/redispatch",
    summary="Send a quarantined message through the pipeline again",
    tags=["quarantine"],
    dependencies=[Depends(require_token)],
)
async def redispatch(request: Request, message_id: CheckedMessageId, body: RedispatchRequest) -> RedispatchResult:
    """Produces the message (or the corrected `value`) to its topic again; the dispatcher ingests it as
    a new message (as `batchfleet inspect quarantine --redispatch ID [--value-file F]`)."""
    value = body.value.encode() if body.value is not None else None
    try:
        where = await ops.redispatch(_settings(request), message_id, value)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    except ConfigError as exc:  # Kafka refused our credentials or TLS: the console's settings, not the message
        raise HTTPException(502, f"kafka refused the console: {exc}") from exc
    except KafkaError as exc:
        raise HTTPException(503, f"cannot reach kafka: {type(exc).__name__}") from exc
    return RedispatchResult(message_id=message_id, redispatched_as=where)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
