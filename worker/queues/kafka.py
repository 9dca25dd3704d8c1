"""Jobs from a Kafka topic through a consumer group (aiokafka), settled exactly once.

Each assigned partition is owned through a transactional producer of its own
(worker/queues/kafka_partition.py): results, dead letters, ledger records and the consumed
offset commit together, and the next owner fences the last. On assignment the worker fences,
then reads the partition's ledger (worker/queues/kafka_ledger.py) and its committed offset, and
seeks there: messages settled above the commit point are skipped, and a run record left
`running` counts its last owner's death. The committed offset is per partition the lowest
unsettled one. Backpressure pauses the partitions while `receive` keeps calling getmany: a
consumer that stops fetching past max.poll.interval.ms leaves the group (aiokafka#848).
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner

from llm_worker.queues.errors import BrokerUnavailable
from llm_worker.queues.kafka_conn import client_kwargs, ensure_ledger_topic, ensure_topics
from llm_worker.queues.kafka_ownership import Ownership
from llm_worker.queues.kafka_partition import (
    KafkaHandle,
    OffsetTracker,
    OwnedPartition,
    PartitionWrites,
)
from llm_worker.queues.kafka_results import KafkaResultSink
from llm_worker.queues.kafka_settlement import KafkaSettlement
from llm_worker.queues.protocol import (
    Attempts,
    Claim,
    Delivery,
    Outcome,
    ResultSink,
    Run,
    Screened,
    Settlement,
)
from llm_worker.queues.runs import RunRecord
from llm_worker.service_settings import KafkaSettings

__all__ = ["KafkaHandle", "KafkaJobSource", "OffsetTracker"]

log = logging.getLogger(__name__)
_home_partition = DefaultPartitioner()


def _offset(delivery: Delivery) -> int:
    handle = delivery.handle
    assert isinstance(handle, KafkaHandle)
    return handle.offset


class _Rebalance(ConsumerRebalanceListener):
    """aiokafka sends no heartbeat while a listener runs. A take-over longer than the session
    timeout (a long ledger, a slow broker) would get this worker evicted half way: its
    partitions go to another worker, and rejoining starts another take-over, for good if each
    is that slow. So a take-over gets a third of the session timeout inside the listener and
    goes on in the background past that, its partitions paused until it is done (receive
    serves only what is held)."""

    def __init__(self, source: "KafkaJobSource", session_timeout_ms: int) -> None:
        self._source = source
        self._patience_s = session_timeout_ms / 3000

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._source.cancel_take_overs()  # what they would take is being revoked
        await self._source.partitions.let_go(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        takeover = self._source.start_take_over(assigned)
        done, _ = await asyncio.wait({takeover}, timeout=self._patience_s)
        if takeover in done:
            takeover.result()  # a failure is the listener's, as when it ran inline
            return
        log.warning("taking partitions %s over is taking more than %.1f s: it goes on in the "
                    "background so the group keeps hearing from this worker",
                    sorted(tp.partition for tp in assigned), self._patience_s)
        takeover.add_done_callback(_log_failed_take_over)


def _log_failed_take_over(takeover: "asyncio.Task[None]") -> None:
    if not takeover.cancelled() and (exc := takeover.exception()) is not None:
        log.warning("a take-over in the background failed (its partitions are taken over "
                    "afresh at a later poll): %r", exc)


class KafkaJobSource:
    def __init__(self, settings: KafkaSettings, worker_id: str) -> None:
        self._settings = settings
        self._worker_id = worker_id
        self.partitions = Ownership(settings)
        self.owned = self.partitions.owned  # live view, for the settlement and the tests
        self._num_partitions = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._ledger_reader: AIOKafkaConsumer | None = None
        # Replaced by settlement(sink) with one that also mirrors to the sink; this one serves
        # a source used alone (acks and dead letters in the tests).
        self._settlement = KafkaSettlement(self.owned, None)
        self._take_overs: set[asyncio.Task[None]] = set()  # begun by the rebalance listener

    @property
    def trackers(self) -> dict[TopicPartition, OffsetTracker]:
        return {tp: partition.tracker for tp, partition in self.owned.items()}

    async def start(self) -> None:
        common = client_kwargs(self._settings)
        try:
            await ensure_topics(self._settings)
            self._num_partitions = await ensure_ledger_topic(self._settings)
            self._ledger_reader = AIOKafkaConsumer(
                **common, enable_auto_commit=False, isolation_level="read_committed")
            await self._ledger_reader.start()
            self._consumer = AIOKafkaConsumer(
                **common, group_id=self._settings.group_id, client_id=self._worker_id,
                enable_auto_commit=False, auto_offset_reset="earliest",
                isolation_level="read_committed",
                session_timeout_ms=self._settings.session_timeout_ms,
                heartbeat_interval_ms=self._settings.heartbeat_interval_ms,
            )
            self.partitions.attach(self._consumer, self._ledger_reader)
            listener = _Rebalance(self, self._settings.session_timeout_ms)
            self._consumer.subscribe([self._settings.jobs_topic], listener=listener)
            await self._consumer.start()
        except KafkaConnectionError as exc:
            raise BrokerUnavailable(
                f"Kafka at {self._settings.bootstrap_servers} is not reachable: {exc}"
            ) from exc

    async def receive(self, max_jobs: int, timeout_s: float) -> list[Delivery]:
        assert self._consumer is not None, "start() first"
        await self.adopted(await self.partitions.heal())
        serving = self.partitions.serving()
        if max_jobs <= 0:
            self._consumer.pause(*serving)
        else:
            self._consumer.resume(*serving)
        batches = await self._consumer.getmany(
            timeout_ms=int(timeout_s * 1000), max_records=max(1, max_jobs)
        )
        deliveries = []
        for tp, records in batches.items():
            partition = self.owned.get(tp)
            if partition is None or partition.lost:  # fetched again once it is taken over
                continue
            done = partition.ledger.done_offsets(records[0].offset) if records else set()
            for record in records:
                partition.tracker.fetched(record.offset, settled=record.offset in done)
                if record.offset not in done:
                    deliveries.append(self._delivery(partition, record))
        await self._flush_idle()
        return deliveries

    def start_take_over(self, assigned: list[TopicPartition]) -> "asyncio.Task[None]":
        """Take the group's new assignment over in a task of its own, which close cancels."""
        async def take_over() -> None:
            await self.adopted(await self.partitions.adopt(assigned))

        task = asyncio.ensure_future(take_over())
        self._take_overs.add(task)
        task.add_done_callback(self._take_overs.discard)
        return task

    async def cancel_take_overs(self) -> None:
        """All or nothing: a take-over cancelled half way stops the producers it started."""
        pending = list(self._take_overs)
        for take_over in pending:
            take_over.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def adopted(self, partitions: list[OwnedPartition]) -> None:
        """Partitions just taken over: copy what their last owner committed but did not get
        to mirror."""
        if partitions:
            await self._settlement.mirror(partitions)

    def _delivery(self, partition: OwnedPartition, record: object) -> Delivery:
        tp = partition.tp
        key = record.key  # type: ignore[attr-defined]
        return Delivery(
            payload=record.value or b"",  # type: ignore[attr-defined]
            key=key.decode(errors="replace") if key else None,
            delivery_count=1,
            handle=KafkaHandle(tp, record.offset, partition.generation),  # type: ignore[attr-defined]
            position=f"{tp.topic}/{tp.partition}@{record.offset}",  # type: ignore[attr-defined]
        )

    async def _flush_idle(self) -> None:
        """Commit offsets that moved without a settlement (skipped, already settled messages)."""
        now = time.monotonic()
        for partition in list(self.owned.values()):
            idle = now - partition.last_transaction_s >= self._settings.commit_interval_s
            if idle and partition.tracker.committable() is not None:
                await partition.transact(PartitionWrites())

    def _partition_of(self, delivery: Delivery) -> OwnedPartition | None:
        return self.partitions.of(delivery)

    def owns(self, delivery: Delivery) -> bool:
        return self._partition_of(delivery) is not None

    async def screen(self, claims: Sequence[Claim]) -> list[Screened]:
        screened = [self._screen(claim) for claim in claims]
        died = [(c.delivery, run.counted()) for c in claims
                if (run := self._run_of(c.delivery)) is not None and run.running]
        await self._write_runs(died)
        return screened

    def _run_of(self, delivery: Delivery) -> RunRecord | None:
        partition = self._partition_of(delivery)
        return partition.ledger.run(_offset(delivery)) if partition is not None else None

    def _screen(self, claim: Claim) -> Screened:
        partition = self._partition_of(claim.delivery)
        if partition is None:  # its next owner screens it again
            return Screened(Attempts(), None)
        offset = _offset(claim.delivery)
        attempts = partition.ledger.attempts(offset)
        if claim.job_id is None:
            return Screened(attempts, None)
        home = self.home_partition(claim.job_id)
        if home != partition.tp.partition:
            return Screened(attempts, None, unbindable=(
                f"job id {claim.job_id!r} belongs on partition {home} of "
                f"{self._settings.jobs_topic} (produce with key = job id), not "
                f"{partition.tp.partition}"))
        bound = partition.ledger.claim(claim.job_id, claim.digest, offset)
        if bound is None:
            return Screened(attempts, None)
        if bound.digest != claim.digest:
            return Screened(attempts, bound.digest)
        return Screened(attempts, None, settled=bound.settled)

    def home_partition(self, job_id: str) -> int:
        partitions = list(range(self._num_partitions))
        return int(_home_partition(job_id.encode(), partitions, partitions))

    async def started(self, runs: Sequence[Run]) -> None:
        await self._write_runs([(run.delivery, RunRecord.of(run)) for run in runs])

    async def hand_back(self, deliveries: Sequence[Delivery]) -> None:
        await self._write_runs(self._changed(deliveries, RunRecord.handed_back))

    async def note_crash(self, deliveries: Sequence[Delivery], error: str) -> None:
        await self._write_runs(self._changed(deliveries, lambda run: run.crashed(error)))

    def _changed(self, deliveries: Sequence[Delivery], change: Callable[[RunRecord], RunRecord]
                 ) -> list[tuple[Delivery, RunRecord]]:
        changed = []
        for delivery in deliveries:
            run = self._run_of(delivery)
            if run is not None:
                changed.append((delivery, change(run)))
        return changed

    async def _write_runs(self, records: Sequence[tuple[Delivery, RunRecord]]) -> None:
        writes: dict[OwnedPartition, PartitionWrites] = {}
        for delivery, record in records:
            partition = self._partition_of(delivery)
            if partition is not None:
                writes.setdefault(partition, PartitionWrites()).ledger[_offset(delivery)] = record
        for partition, partition_writes in writes.items():
            await partition.transact(partition_writes)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Fetch them again: each partition seeks back to its earliest released offset. They
        stay in flight meanwhile, so the commit point cannot pass them."""
        assert self._consumer is not None
        earliest: dict[TopicPartition, int] = {}
        for delivery in deliveries:
            partition = self._partition_of(delivery)
            if partition is not None:
                offset = _offset(delivery)
                earliest[partition.tp] = min(offset, earliest.get(partition.tp, offset))
        for tp, offset in earliest.items():
            self._consumer.seek(tp, offset)

    def settlement(self, sink: ResultSink) -> Settlement:
        assert isinstance(sink, KafkaResultSink), "a Kafka source settles into a Kafka sink"
        self._settlement = KafkaSettlement(self.owned, sink)
        return self._settlement

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await self._settlement.commit([Outcome([d], None) for d in deliveries])

    async def ack(self, delivery: Delivery) -> None:
        await self.ack_many([delivery])

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._settlement.commit([Outcome([delivery], None, dead_letter=reason)])

    async def lag(self) -> int | None:
        """Records past what this consumer fetched, over its assigned partitions (high-water
        marks come with each fetch, so this costs no request)."""
        if self._consumer is None:
            return None
        total, known = 0, False
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            partition = self.owned.get(tp)
            if highwater is None:
                continue
            fetched = partition.tracker.next_offset if partition is not None else None
            if fetched is None:
                fetched = await self._consumer.position(tp)
            total += max(0, highwater - fetched)
            known = True
        return total if known else None

    async def close(self) -> None:
        """Commit what is settled and leave the group; unsettled offsets are redelivered."""
        await self.cancel_take_overs()
        await self.partitions.close()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._ledger_reader is not None:
            await self._ledger_reader.stop()
