"""Jobs from a Kafka topic through a consumer group (aiokafka).

Offsets are committed by hand: per partition, the highest offset below which every job is
finished (the smallest in-flight offset, or one past the last fetched when none is in flight),
so a crash redelivers exactly the unfinished jobs and some finished ones (made harmless by the
job-id idempotency check). Backpressure pauses the assigned partitions while `receive` keeps
calling getmany: a consumer that stops fetching past max.poll.interval.ms is dropped from the
group and its commits fail (aiokafka#848).
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from llm_worker.queues.errors import BrokerUnavailable
from llm_worker.queues.kafka_conn import client_kwargs, ensure_topics
from llm_worker.queues.protocol import Delivery
from llm_worker.service_settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass
class OffsetTracker:
    """One assigned partition's offsets handed out but not yet finished."""

    generation: int  # assignment this tracker belongs to; older acks are ignored
    in_flight: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest offset fetched
    committed: int | None = None

    def fetched(self, offset: int) -> None:
        self.in_flight.add(offset)
        self.next_offset = max(self.next_offset or 0, offset + 1)

    def committable(self) -> int | None:
        """Offset to commit now (Kafka's meaning: the next one to read), if it moved."""
        offset = min(self.in_flight) if self.in_flight else self.next_offset
        if offset is None or (self.committed is not None and offset <= self.committed):
            return None
        return offset


@dataclass(frozen=True)
class KafkaHandle:
    partition: TopicPartition
    offset: int
    generation: int


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: "KafkaJobSource") -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Commit finished work before another worker takes these partitions over.
        await self._source.commit(set(revoked))
        for partition in revoked:
            self._source.trackers.pop(partition, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._source.generation += 1
        for partition in assigned:
            self._source.trackers[partition] = OffsetTracker(self._source.generation)


class KafkaJobSource:
    def __init__(self, settings: KafkaSettings, worker_id: str) -> None:
        self._settings = settings
        self._worker_id = worker_id
        self.trackers: dict[TopicPartition, OffsetTracker] = {}
        self.generation = 0
        self._next_commit_s = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None  # dead letters only

    async def start(self) -> None:
        common = client_kwargs(self._settings)
        try:
            await ensure_topics(self._settings)
            self._consumer = AIOKafkaConsumer(
                **common, group_id=self._settings.group_id, client_id=self._worker_id,
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=self._settings.session_timeout_ms,
                heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
            )
            self._consumer.subscribe([self._settings.jobs_topic], listener=_Rebalance(self))
            await self._consumer.start()
            self._producer = AIOKafkaProducer(**common, enable_idempotence=True, acks="all")
            await self._producer.start()
        except KafkaConnectionError as exc:
            raise BrokerUnavailable(
                f"Kafka at {self._settings.bootstrap_servers} is not reachable: {exc}"
            ) from exc

    async def receive(self, max_jobs: int, timeout_s: float) -> list[Delivery]:
        assert self._consumer is not None, "start() first"
        assigned = self._consumer.assignment()
        if max_jobs <= 0:
            self._consumer.pause(*assigned)
        else:
            self._consumer.resume(*assigned)
        batches = await self._consumer.getmany(
            timeout_ms=int(timeout_s * 1000), max_records=max(1, max_jobs)
        )
        deliveries = []
        for partition, records in batches.items():
            tracker = self.trackers.setdefault(partition, OffsetTracker(self.generation))
            for record in records:
                tracker.fetched(record.offset)
                deliveries.append(Delivery(
                    payload=record.value or b"",
                    key=record.key.decode(errors="replace") if record.key else None,
                    delivery_count=1,
                    handle=KafkaHandle(partition, record.offset, tracker.generation),
                    position=f"{partition.topic}/{partition.partition}@{record.offset}",
                ))
        if time.monotonic() >= self._next_commit_s:
            await self.commit(set(self.trackers))
        return deliveries

    async def lag(self) -> int | None:
        """Records past what this consumer fetched, over its assigned partitions (high-water
        marks come with each fetch, so this costs no request)."""
        if self._consumer is None:
            return None
        total, known = 0, False
        for partition in self._consumer.assignment():
            highwater = self._consumer.highwater(partition)
            tracker = self.trackers.get(partition)
            if highwater is None:
                continue
            fetched = tracker.next_offset if tracker and tracker.next_offset is not None else None
            if fetched is None:
                fetched = await self._consumer.position(partition)
            total += max(0, highwater - fetched)
            known = True
        return total if known else None

    async def ack(self, delivery: Delivery) -> None:
        handle = delivery.handle
        assert isinstance(handle, KafkaHandle)
        tracker = self.trackers.get(handle.partition)
        if tracker is not None and tracker.generation == handle.generation:
            tracker.in_flight.discard(handle.offset)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:  # bookkeeping only; the commit loop reaches the broker
            await self.ack(delivery)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        assert self._producer is not None, "start() first"
        await self._producer.send_and_wait(
            self._settings.dead_letter_topic, delivery.payload,
            key=delivery.key.encode() if delivery.key else None,
            headers=[("reason", reason.encode()), ("origin", delivery.position.encode())],
        )
        await self.ack(delivery)

    async def commit(self, partitions: set[TopicPartition]) -> None:
        """Commit finished prefixes of `partitions`; a failure is retried on the next tick."""
        self._next_commit_s = time.monotonic() + self._settings.commit_interval_s
        if self._consumer is None:
            return
        offsets = {}
        for partition in partitions:
            tracker = self.trackers.get(partition)
            offset = tracker.committable() if tracker is not None else None
            if offset is not None:
                offsets[partition] = offset
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("kafka commit of %s failed, will retry: %r", offsets, exc)
            return
        for partition, offset in offsets.items():
            if partition in self.trackers:
                self.trackers[partition].committed = offset

    async def close(self) -> None:
        """Commit what is finished and leave the group; unfinished offsets are redelivered."""
        if self._consumer is not None:
            await self.commit(set(self.trackers))
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
