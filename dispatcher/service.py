"""The dispatcher loop: poll Kafka, write units to Redis, then commit Kafka offsets.

Exactly-once ingest: each unit stores its partitions' next offsets in the same Lua call that
creates the batch (or quarantines the message).  On assignment the consumer seeks to the offsets
stored in Redis; a unit whose offsets were already ingested is refused by Redis (StaleOffsetError)
and the dispatcher re-seeks instead of creating a second batch.  Kafka commits only mirror Redis,
for lag tooling; they are made after Redis has the data.

Fenced ingest: the dispatcher remembers, per partition, the next offset it believes Redis holds
(``expected``: loaded on assignment, advanced by each of its own writes) and every write carries
it.  When Redis holds something else (a failover or an AOF restart lost acknowledged writes, or
another dispatcher owns the partition now) the write is refused (FencedOffsetError), the rest of
the poll is dropped and every assigned partition re-seeks to what Redis holds.  The same reload
runs after every Redis outage, and every 2 s a read-only comparison catches a quiet partition.
A partition whose offset vanished from Redis re-seeks to where this dispatcher started ingesting
it when Redis held nothing (``origin``), or to the beginning of the partition when it never knew
that: never to Kafka's committed offset, which mirrors the very writes Redis lost.
Re-ingesting is safe: batch ids are deterministic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from batchfleet import metrics
from batchfleet.dispatcher.batching import Unit, group_sizes, plan_dispatch
from batchfleet.errors import FencedOffsetError, StaleOffsetError, StopRequested
from batchfleet.heartbeat import heartbeat, process_member
from batchfleet.kafka import client_options, wait_for_kafka
from batchfleet.keys import offset_field
from batchfleet.models import BatchSpec, JobShape, QuarantineEntry
from batchfleet.retry import REDIS_UNAVAILABLE, describe, retry
from batchfleet.runtime import bounded, start_kafka
from batchfleet.settings import Settings
from batchfleet.store import BatchStore

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_QUARANTINE_RETENTION_S = 7 * 86_400
_QUARANTINE_MAX = 100_000
_FLEET_EVERY_S = 5.0  # how often the live workers are counted (group sizes, job shape)
_VERIFY_EVERY_S = 2.0  # how often the stored offsets are compared with what we believe (quiet partitions too)
_TOPICS_EVERY_S = 10.0  # how often a configured topic the cluster does not list is looked for again


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Every unit written so far is in Redis already; mirror its offsets to Kafka best-effort.
        await self.dispatcher.commit_stored(revoked)
        self.dispatcher.forget_lag(revoked)
        self.dispatcher.forget_offsets(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.dispatcher.seek_to_stored(assigned)


class Dispatcher:
    """One member of the dispatcher consumer group."""

    def __init__(self, settings: Settings, store: BatchStore, *, name: str = "dispatcher") -> None:
        self.settings = settings
        self.store = store
        self.name = name
        if settings.ingest_wait_replicas:
            store.ingest_wait = (settings.ingest_wait_replicas, settings.ingest_wait_timeout_ms)
        self.stop = asyncio.Event()  # replaced by run()'s: every wait for Redis ends when it is set
        self.consumer: AIOKafkaConsumer | None = None
        self.paused = False
        self.batches_created = 0
        self.messages_quarantined = 0
        self.fenced = 0  # mismatches found between what this dispatcher expected and what Redis holds
        self.expected: dict[str, int | None] = {}  # field -> next offset believed stored (None: nothing)
        self.origin: dict[str, int] = {}  # field -> first offset ingested while Redis held nothing
        self._redis_was_away = False
        self._lag_measured = 0.0
        self.lag: dict[str, int] = {}
        self._fleet_seen = -_FLEET_EVERY_S
        self._verified_at = time.monotonic()
        self.workers_seen = 0  # live worker processes (heartbeats), at the last look
        self.job_shape: JobShape = "group"  # "station" while a worker that knows no groups is alive
        self.kafka_options = client_options(settings)  # ConfigError: a bad combination or a missing file
        self.missing_topics: set[str] = set()  # configured topics the cluster did not list at the last look
        self._topics_seen = -_TOPICS_EVERY_S

    # -- Kafka plumbing ----------------------------------------------------------------------
    def _consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **self.kafka_options,
            group_id=s.kafka_group_id,
            client_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(1_048_576, s.max_message_bytes * 2),
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            request_timeout_ms=s.kafka_request_timeout_ms,  # a fetch stuck in a cut link is dropped after this
        )

    async def seek_to_stored(self, assigned: list[TopicPartition]) -> None:
        """Newly assigned partitions: adopt what Redis holds (no belief of ours to compare)."""
        if self.consumer is None or not assigned:
            return
        self.forget_offsets(assigned)
        await self.reseek(assigned)
        log.info("%s assigned %s", self.name, ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)))

    def forget_offsets(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.expected.pop(offset_field(tp.topic, tp.partition), None)
            self.origin.pop(offset_field(tp.topic, tp.partition), None)

    async def reseek(self, partitions: list[TopicPartition], *, changed_only: bool = False) -> None:
        """Seek each partition to the next offset Redis holds; a mismatch with what we expected is
        counted and logged (a fence).  ``changed_only``: the periodic read-only check, which seeks
        only the partitions whose stored offset differs from ours (a seek drops what was prefetched),
        so a failover or restart that lost writes is noticed on a quiet partition too."""
        if self.consumer is None or not partitions:
            return
        try:
            stored = await self._redis_retry(
                lambda: self.store.load_offsets(offset_field(tp.topic, tp.partition) for tp in partitions)
            )
        except StopRequested:  # stopping: nothing is consumed any more, the next owner seeks
            return
        for tp in partitions:
            name = offset_field(tp.topic, tp.partition)
            if changed_only and (name not in self.expected or self.expected[name] == stored.get(name)):
                continue
            await self._seek(self.consumer, tp, stored.get(name))

    async def _seek(self, consumer: AIOKafkaConsumer, tp: TopicPartition, stored: int | None) -> None:
        name = offset_field(tp.topic, tp.partition)
        known = name in self.expected
        believed = self.expected.get(name)
        self.expected[name] = stored
        if known and believed != stored:
            self._count_fence(tp, believed, stored)
        if stored is not None:
            consumer.seek(tp, stored)
        elif name in self.origin:  # Redis lost every write of the partition since we began it
            consumer.seek(tp, self.origin[name])
        elif known and believed is not None:  # lost, and we never knew where it began
            await consumer.seek_to_beginning(tp)
        # else: nothing stored, nothing ingested by us: the position is where consumption starts

    def _count_fence(self, tp: TopicPartition, believed: int | None, stored: int | None) -> None:
        self.fenced += 1
        metrics.INGEST_FENCED.labels(tp.topic, str(tp.partition)).inc()
        log.warning(
            "%s: fenced %s[%d]: expected redis to hold next offset %s, it holds %s; re-seeking to %s",
            self.name,
            tp.topic,
            tp.partition,
            "nothing" if believed is None else believed,
            "nothing (the offset vanished)" if stored is None else stored,
            stored if stored is not None else self._vanished_target(offset_field(tp.topic, tp.partition)),
            extra={"topic": tp.topic},
        )

    def _vanished_target(self, name: str) -> str:
        return f"{self.origin[name]}, where this dispatcher began it" if name in self.origin else "the beginning of the partition"

    def forget_lag(self, partitions: list[TopicPartition]) -> None:
        """A partition we no longer own is someone else's to report."""
        for tp in partitions:
            self.lag.pop(f"{tp.topic}[{tp.partition}]", None)
            try:
                metrics.KAFKA_LAG.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass

    async def commit_stored(self, partitions: list[TopicPartition]) -> None:
        if self.consumer is None or not partitions:
            return
        try:
            stored = await self.store.load_offsets(offset_field(tp.topic, tp.partition) for tp in partitions)
            offsets = {
                tp: stored[offset_field(tp.topic, tp.partition)]
                for tp in partitions
                if offset_field(tp.topic, tp.partition) in stored
            }
            if offsets:
                await self.consumer.commit(offsets)
        except (KafkaError, *REDIS_UNAVAILABLE) as exc:
            log.warning("could not mirror offsets to Kafka for %s: %s", partitions, describe(exc))

    # -- Redis with patience -----------------------------------------------------------------
    async def _redis_retry(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run op until Redis answers (a full Redis counts as away); meanwhile nothing is consumed or
        committed.  Raises StopRequested once the dispatcher is asked to stop.  After an outage the
        next step re-seeks every assigned partition to what Redis holds (it may have lost writes)."""

        async def attempt() -> T:
            try:
                return await op()
            except REDIS_UNAVAILABLE:
                self._redis_was_away = True
                raise

        return await retry(attempt, what=self.name, stop=self.stop)

    # -- the loop ----------------------------------------------------------------------------
    def _subscribed_consumer(self) -> AIOKafkaConsumer:
        consumer = self._consumer()
        consumer.subscribe(self.settings.topics, listener=_Rebalance(self))
        self.consumer = consumer
        return consumer

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        await self._redis_retry(self.store.check_layout)  # LayoutError: another shard count is stored
        where = self.settings.kafka_bootstrap_servers
        listed = await wait_for_kafka(self.settings, stop, f"{self.name}: waiting for kafka at {where}")  # ConfigError: refused
        self._name_missing_topics(listed)  # before subscribing: a broker that creates topics on request would hide them
        consumer = await start_kafka(self._subscribed_consumer, what=f"{self.name}: waiting for kafka at {where}", stop=stop)
        beating = asyncio.Event()
        beat = asyncio.create_task(heartbeat(self.store, process_member("dispatcher"), self._info, beating))
        log.info("%s consuming %s as group %s", self.name, ",".join(self.settings.topics), self.settings.kafka_group_id)
        try:
            while not stop.is_set():
                await self._step()
        except StopRequested:
            log.info("%s: stop requested while waiting for redis; nothing of the unwritten poll is committed", self.name)
        finally:
            step_s = max(self.settings.worker_grace_s / 2, 0.5)  # a Kafka outage must not hold the exit
            await bounded(self.commit_stored(list(consumer.assignment())), step_s, "mirroring offsets to kafka")
            await bounded(consumer.stop(), step_s, "leaving the consumer group")
            beating.set()
            await beat
            log.info(
                "%s stopped: %d batches created, %d messages quarantined",
                self.name,
                self.batches_created,
                self.messages_quarantined,
            )

    def _info(self) -> dict[str, Any]:
        assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in (self.consumer.assignment() if self.consumer else ()))
        return {
            "doing": "paused (backpressure)" if self.paused else "consuming",
            "assigned": assigned,
            "batches_created": self.batches_created,
            "quarantined": self.messages_quarantined,
            "fenced": self.fenced,
            "lag": {k: v for k, v in self.lag.items() if k in assigned},
        }

    async def _step(self) -> None:
        if await self._backpressure():
            return
        await self._redis_retry(self.look_at_workers)
        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("dispatcher not started")
        if self._redis_was_away:
            self._redis_was_away = False
            log.info("%s: redis answers again; re-seeking to the offsets it holds", self.name)
            await self.reseek(list(consumer.assignment()))
            self._verified_at = time.monotonic()
        elif time.monotonic() - self._verified_at >= _VERIFY_EVERY_S:
            await self.reseek(list(consumer.assignment()), changed_only=True)
            self._verified_at = time.monotonic()
        polled = await consumer.getmany(timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.poll_max_records)
        messages = [m for batch in polled.values() for m in batch]
        if messages:
            await self.dispatch(messages)
        await self._measure_lag(consumer)
        await self._look_at_topics(consumer)

    async def _look_at_topics(self, consumer: AIOKafkaConsumer) -> None:
        """A configured topic the cluster does not list is consumed silently as nothing: every
        ``_TOPICS_EVERY_S`` say so (a misspelt name, or a topic not created yet), until it appears."""
        if time.monotonic() - self._topics_seen < _TOPICS_EVERY_S:
            return
        self._topics_seen = time.monotonic()
        try:
            listed = await consumer.topics()
        except KafkaError as exc:
            log.debug("could not list the topics: %s", describe(exc))
            return
        self._name_missing_topics(set(listed))

    def _name_missing_topics(self, listed: set[str]) -> None:
        self._topics_seen = time.monotonic()
        missing = set(self.settings.topics) - listed
        for topic in sorted(missing):
            log.warning(
                "%s: topic %s does not exist (yet); consuming it once it is created", self.name, topic, extra={"topic": topic}
            )
        for topic in sorted(self.missing_topics - missing):
            log.info("%s: topic %s exists now", self.name, topic, extra={"topic": topic})
        self.missing_topics = missing

    async def look_at_workers(self, *, now: bool = False) -> None:
        """Every few seconds: how many workers are live (a batch is split into at least that many jobs)
        and whether every one of them runs group jobs.  A worker of an earlier release lists no
        ``job_shapes`` in its heartbeat; while one is alive, batches get one-station jobs, which every
        release runs, so a rolling upgrade may replace dispatchers and workers in any order."""
        if not now and time.monotonic() - self._fleet_seen < _FLEET_EVERY_S:
            return
        self._fleet_seen = time.monotonic()
        live = await self.store.live_processes("worker")
        self.workers_seen = len(live)
        old = sorted(member for member, info in live.items() if "group" not in info.get("job_shapes", ()))
        shape: JobShape = "station" if old else "group"
        if shape != self.job_shape:
            if old:
                log.warning("%s: worker(s) of an earlier release alive (%s): one station per job", self.name, ", ".join(old[:5]))
            else:
                log.info(
                    "%s: every live worker runs group jobs: %d station(s) per job at most",
                    self.name,
                    self.settings.stations_per_job,
                )
        self.job_shape = shape

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Kafka lag per partition (highwater - position): aiokafka does not expose it."""
        now = time.monotonic()
        if now - self._lag_measured < 5:
            return
        self._lag_measured = now
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await consumer.position(tp)
            except KafkaError:
                continue
            lag = max(highwater - position, 0)
            metrics.KAFKA_LAG.labels(tp.topic, str(tp.partition)).set(lag)
            self.lag[f"{tp.topic}[{tp.partition}]"] = lag

    async def _backpressure(self) -> bool:
        """Pause all partitions while too many batches are open; resume below 90 %."""
        consumer = self.consumer
        if consumer is None:
            return False
        open_batches, queued = await self._redis_retry(self.store.open_batches)
        metrics.OPEN_BATCHES.set(open_batches)
        metrics.QUEUE_DEPTH.set(queued)
        limit = self.settings.max_open_batches
        if not self.paused and open_batches >= limit:
            consumer.pause(*consumer.assignment())
            self.paused = True
            log.warning("backpressure: %d open batches >= %d; pausing consumption", open_batches, limit)
        elif self.paused and open_batches < limit * 0.9:
            consumer.resume(*consumer.assignment())
            self.paused = False
            log.info("backpressure released: %d open batches", open_batches)
        metrics.DISPATCHER_PAUSED.set(1 if self.paused else 0)
        if self.paused:
            await consumer.getmany(timeout_ms=200)  # keeps the group membership alive; returns nothing
        return self.paused

    async def dispatch(self, messages: list[Any]) -> None:
        """Write one poll's units to Redis, in order, then mirror the offsets to Kafka."""
        units = plan_dispatch(messages, self.settings.topic, self.settings.max_message_bytes, self.store.keys.shard_of_partition)
        for m in messages:  # where ingest of a partition began while Redis held nothing for it
            name = offset_field(m.topic, m.partition)
            if self.expected.get(name) is None and name not in self.origin:
                self.origin[name] = min(x.offset for x in messages if x.topic == m.topic and x.partition == m.partition)
        try:
            for unit in units:
                await self._redis_retry(lambda u=unit: self._write(u))  # type: ignore[misc]
        except FencedOffsetError as fenced:
            log.warning("%s: write refused: %s; dropping the rest of the poll", self.name, fenced)
            if self.consumer is not None:
                await self.reseek(list(self.consumer.assignment()))
            return
        except StaleOffsetError as stale:
            log.warning("%s: %s; re-seeking to the offsets stored in Redis", self.name, stale)
            if self.consumer is not None:
                await self.reseek(list(self.consumer.assignment()))
            return
        await self._commit(messages)

    async def _write(self, unit: Unit) -> None:
        if isinstance(unit, QuarantineEntry):
            await self._write_quarantine(unit)
        else:
            await self._write_batch(unit)

    async def _write_quarantine(self, entry: QuarantineEntry) -> None:
        new = await self.store.quarantine(
            entry, retention_s=_QUARANTINE_RETENTION_S, max_entries=_QUARANTINE_MAX, expected=self.expected
        )
        if entry.advance_offset:
            self.expected[offset_field(entry.topic, entry.partition)] = entry.offset + 1
        if new:
            self.messages_quarantined += 1
            metrics.MESSAGES_QUARANTINED.labels(entry.topic).inc()
            log.warning(
                "quarantined %s[%d]@%d: %s", entry.topic, entry.partition, entry.offset, entry.reason, extra={"topic": entry.topic}
            )

    async def _write_batch(self, spec: BatchSpec) -> None:
        sizes = group_sizes(len(spec.stations), self.settings.stations_per_job, self.workers_seen)
        spec = dataclasses.replace(spec, group_sizes=sizes, job_shape=self.job_shape)
        created, _ = await self.store.create_batch(spec, expected=self.expected)
        if created:
            for r in spec.ranges:
                self.expected[offset_field(r.topic, r.partition)] = r.next_offset
            jobs = len(sizes) if self.job_shape == "group" else len(spec.stations)
            self.batches_created += 1
            metrics.BATCHES_CREATED.labels(spec.topic).inc()
            metrics.STATIONS_DISPATCHED.labels(spec.topic).inc(len(spec.stations))
            metrics.JOBS_DISPATCHED.labels(spec.topic).inc(jobs)
            log.info(
                "batch %s created: %d stations expected from %d message(s) in %d job(s), deadline %.1fs",
                spec.batch_id,
                len(spec.stations),
                spec.messages,
                jobs,
                spec.timeout_s,
                extra={"batch_id": spec.batch_id, "topic": spec.topic},
            )

    async def _commit(self, messages: list[Any]) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        offsets: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            offsets[tp] = max(offsets.get(tp, 0), m.offset + 1)
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Redis holds the authoritative offsets; the next commit or assignment catches up.
            log.warning("kafka commit failed (offsets are safe in Redis): %s", exc)
