"""One jobs partition while this worker owns it: its transactional producer, its offsets and its
ledger (worker/queues/kafka_ledger.py), written together.

Exactly once: a partition's results, dead letters, ledger records and consumed offset go out in
one transaction of a producer whose transactional id names the partition. The next owner's
producer takes the same id, which fences this one (Kafka aborts its open transaction and refuses
its later ones), so a worker that lost the partition, or died, can never commit a second record
for a job the next owner settles. aiokafka sends no consumer-group generation with the offsets
(KIP-447), so the fencing must come from the transactional id: one producer per partition.
"""

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from llm_worker.queues.dead_letters import DeadLetterPayload
from llm_worker.queues.kafka_ledger import (
    DoneRecord,
    LedgerEntry,
    PartitionLedger,
    UnreadableEntry,
    decode_entry,
    entry_key,
    entry_offset,
)
from llm_worker.queues.kafka_producer import fatal_error, retrieve, stop
from llm_worker.queues.protocol import Delivery
from llm_worker.schemas import Result
from llm_worker.service_settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass
class OffsetTracker:
    """One assigned partition's offsets handed out but not yet settled."""

    generation: int  # assignment this tracker belongs to; older acks are ignored
    in_flight: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest offset fetched
    committed: int | None = None

    def fetched(self, offset: int, settled: bool = False) -> None:
        if not settled:
            self.in_flight.add(offset)
        self.next_offset = max(self.next_offset or 0, offset + 1)

    def committable(self, finishing: Sequence[int] = ()) -> int | None:
        """Offset to commit once `finishing` settles (Kafka's meaning: the next one to read),
        if it moved."""
        unfinished = self.in_flight.difference(finishing)
        offset = min(unfinished) if unfinished else self.next_offset
        if offset is None or (self.committed is not None and offset <= self.committed):
            return None
        return offset


class _CommitUnknown(Exception):
    """commit_transaction raised: whether the transaction committed is not known here."""


@dataclass(frozen=True)
class KafkaHandle:
    partition: TopicPartition
    offset: int
    generation: int


@dataclass
class PartitionWrites:
    """What one transaction of a partition writes; `settled` offsets are acked by it."""

    results: list[Result] = field(default_factory=list)
    dead_letters: list[tuple[Delivery, str]] = field(default_factory=list)
    ledger: dict[int, LedgerEntry | None] = field(default_factory=dict)
    settled: list[int] = field(default_factory=list)


class OwnedPartition:
    def __init__(self, tp: TopicPartition, generation: int, settings: KafkaSettings,
                 producer: AIOKafkaProducer, ledger: PartitionLedger) -> None:
        self.tp = tp
        self.tracker = OffsetTracker(generation)
        self.ledger = ledger
        self.lost = False  # nothing more is written through this producer
        self.fenced_at_s: float | None = None  # when another producer took its id over
        self.last_transaction_s = time.monotonic()
        self._settings = settings
        self._producer = producer
        self._lock = asyncio.Lock()
        self._mirrored: set[int] = set()  # done records whose result may now be dropped

    @property
    def generation(self) -> int:
        return self.tracker.generation

    async def transact(self, writes: PartitionWrites) -> bool:
        """Write `writes` and the offset they let the partition commit, all or nothing.
        False: this producer lost the partition (fenced, dead, or a commit of unknown outcome),
        so nothing more is written through it; the work is redone by whoever takes it next,
        which may be this worker again (KafkaJobSource heals lost partitions). Raises, with
        nothing written, when the broker refused a record (e.g. one over its size limit)."""
        async with self._lock:
            if self.lost:
                return False
            commit_to = self.tracker.committable(writes.settled)
            horizon = commit_to if commit_to is not None else (self.tracker.committed or 0)
            expired = self.ledger.expired(horizon)
            ledger = {**self._slimmed(), **writes.ledger, **dict.fromkeys(expired)}
            try:
                await self._send(writes, ledger, commit_to)
            except Exception as exc:
                if await self._given_up(exc):
                    return False
                raise
            for offset, entry in ledger.items():
                self.ledger.apply(offset, entry)
            self.tracker.in_flight.difference_update(writes.settled)
            if commit_to is not None:
                self.tracker.committed = commit_to
            self.last_transaction_s = time.monotonic()
            return True

    async def _send(self, writes: PartitionWrites, ledger: dict[int, LedgerEntry | None],
                    commit_to: int | None) -> None:
        producer, s = self._producer, self._settings
        await producer.begin_transaction()
        sent: list[asyncio.Future] = []
        try:
            for result in writes.results:
                sent.append(await producer.send(
                    s.results_topic, result.model_dump_json().encode(), key=result.id.encode()))
            for delivery, reason in writes.dead_letters:
                sent.append(await self._send_dead_letter(delivery, reason))
            for offset, entry in ledger.items():
                sent.append(await producer.send(
                    ledger_topic(s), None if entry is None else entry.to_json(),
                    key=entry_key(offset), partition=self.tp.partition))
            if commit_to is not None:
                await producer.send_offsets_to_transaction({self.tp: commit_to}, s.group_id)
            await asyncio.gather(*sent)
        except BaseException:  # the records fail with the transaction, now or once it ends
            for future in sent:
                future.add_done_callback(retrieve)
            raise
        try:
            await producer.commit_transaction()
        except Exception as exc:  # it may have committed: only a fresh read can tell
            raise _CommitUnknown() from exc

    async def _send_dead_letter(self, delivery: Delivery, reason: str) -> asyncio.Future:
        bounded = DeadLetterPayload.of(delivery.payload)
        headers = [("reason", reason.encode()), ("origin", delivery.position.encode()),
                   *((name, value.encode()) for name, value in bounded.fields().items())]
        key = delivery.key.encode()[:256] if delivery.key else None
        return await self._producer.send(self._settings.dead_letter_topic, bounded.payload,
                                         key=key, headers=headers)

    async def _given_up(self, exc: Exception) -> bool:
        """After a failed transaction: True, the partition given up, when this producer can
        write no more; else False, the transaction aborted, so the caller may retry."""
        if fatal_error(self._producer) is None and not isinstance(exc, _CommitUnknown):
            await self._abort()
        fatal = fatal_error(self._producer)  # however it surfaced (send() says IllegalOperation)
        if isinstance(fatal, ProducerFenced):
            log.warning("%s moved to another worker; dropping its unsettled work", self.tp)
            self.lost, self.fenced_at_s = True, time.monotonic()
        elif fatal is not None or isinstance(exc, _CommitUnknown):
            log.warning("a transaction on %s ended in %r: giving the partition up to be taken "
                        "over afresh", self.tp, fatal or exc.__cause__)
            self.lost = True
        if self.lost:  # a dead producer holds its connections until stopped
            await stop(self._producer)
        return self.lost

    async def _abort(self) -> None:
        try:
            await self._producer.abort_transaction()
        except KafkaError as exc:  # the producer is unusable; this partition must be re-taken
            log.error("aborting a transaction of %s failed (%r); giving the partition up",
                      self.tp, exc)
            self.lost = True

    def mirrored(self, offsets: Sequence[int]) -> None:
        """The Redis mirror has these results: their done records may drop them."""
        self._mirrored.update(offsets)

    def _slimmed(self) -> dict[int, LedgerEntry | None]:
        slim: dict[int, LedgerEntry | None] = {}
        for offset in self._mirrored:
            entry = self.ledger.entries.get(offset)
            if isinstance(entry, DoneRecord) and entry.result is not None:
                slim[offset] = entry.slim()
        self._mirrored.clear()
        return slim

    async def close(self) -> None:
        self.lost = True
        async with self._lock:
            await stop(self._producer)


def ledger_topic(settings: KafkaSettings) -> str:
    return f"{settings.jobs_topic}.ledger"


async def read_ledgers(reader: AIOKafkaConsumer, settings: KafkaSettings,
                       partitions: Sequence[int], window: int) -> dict[int, PartitionLedger]:
    """Each ledger partition read to its end (read_committed: only committed records). Call
    it after this worker's producer for the partition fenced the last owner, so no record of
    the last owner's can commit after the read."""
    ledgers = {p: PartitionLedger(window) for p in partitions}
    tps = [TopicPartition(ledger_topic(settings), p) for p in partitions]
    if not tps:
        return ledgers
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    end = await reader.end_offsets(tps)
    remaining = {tp for tp in tps if end[tp] > 0}
    while remaining:
        for tp, records in (await reader.getmany(*remaining, timeout_ms=200)).items():
            for record in records:
                _load(ledgers[tp.partition], record)
        remaining = {tp for tp in remaining if await reader.position(tp) < end[tp]}
    return ledgers


def _load(ledger: PartitionLedger, record: ConsumerRecord) -> None:
    """One ledger record into `ledger`. An unreadable one is skipped with a warning: failing
    the take-over instead would fail every later one too (the record stays in the compacted
    topic), leaving the partition unserved for good."""
    offset = None
    try:
        offset = entry_offset(record.key)
        entry = None if record.value is None else decode_entry(record.value)
    except UnreadableEntry as exc:
        log.warning("skipping unreadable ledger record %s/%d@%d (%s)%s", record.topic,
                    record.partition, record.offset, exc, "" if offset is None else
                    f": jobs offset {offset} counts as unsettled and runs again unless committed")
        ledger.skip(offset)
        return
    ledger.apply(offset, entry)
