"""Which jobs partitions this worker owns, and how it takes one over or lets it go.

Taking over: pause the partition (fetching began with the assignment), fence the last owner by
registering the partition's transactional id, read the partition's ledger to its end, fetch the
committed offset again (the fenced owner's last commit counts) and seek there, all or nothing
(a take-over that fails or is cancelled half way stops the producers it started). Letting go:
hand back the runs still going (not deaths) in a last transaction and close the producer.
A partition that is assigned but not held (its take-over failed) or that lost its producer
while assigned is taken over afresh by `heal`, but never while the group rebalances: from the
revocation to the next assignment the consumer still reports the old assignment, and taking a
revoked partition back then would fence the worker it goes to and leave this one holding a
partition it is not assigned (whose pause / resume then fails every poll).
"""

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from llm_worker.queues.kafka_partition import (
    KafkaHandle,
    OwnedPartition,
    PartitionWrites,
    read_ledgers,
)
from llm_worker.queues.kafka_producer import start_fencing, stop
from llm_worker.queues.protocol import Delivery
from llm_worker.service_settings import KafkaSettings

log = logging.getLogger(__name__)


class Ownership:
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self.owned: dict[TopicPartition, OwnedPartition] = {}
        self.generation = 0  # one more at each take-over; a delivery carries its own
        self.num_unreadable_ledger_records = 0  # skipped by the take-overs that succeeded
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._rejoining = True  # from a revocation to the next assignment; none before the first
        # One take-over or release at a time: the rebalance listener's and heal's would race
        # (and share the ledger reader).
        self._changing = asyncio.Lock()

    def attach(self, consumer: AIOKafkaConsumer, ledger_reader: AIOKafkaConsumer) -> None:
        self._consumer, self._reader = consumer, ledger_reader

    def of(self, delivery: Delivery) -> OwnedPartition | None:
        """The partition a delivery came from, if it is still held under that take-over."""
        handle = delivery.handle
        assert isinstance(handle, KafkaHandle)
        partition = self.owned.get(handle.partition)
        if partition is None or partition.generation != handle.generation or partition.lost:
            return None
        return partition

    def serving(self) -> list[TopicPartition]:
        return [tp for tp, partition in self.owned.items() if not partition.lost]

    async def adopt(self, assigned: Sequence[TopicPartition]) -> list[OwnedPartition]:
        """The rebalance listener's: the group's new assignment for this worker."""
        async with self._changing:
            try:
                return await self._adopt(assigned)
            finally:  # a failed take-over is left to heal, which may act from now on
                self._rejoining = False

    async def _adopt(self, assigned: Sequence[TopicPartition]) -> list[OwnedPartition]:
        """Take over those of `assigned` not held already (heal may have been first)."""
        assert self._consumer is not None and self._reader is not None
        held = {tp for tp, partition in self.owned.items() if not partition.lost}
        assigned = [tp for tp in assigned if tp not in held]
        for tp in assigned:
            old = self.owned.pop(tp, None)
            if old is not None:
                await old.close()
        if not assigned:
            return []
        self.generation += 1
        self._consumer.pause(*assigned)
        producers: dict[TopicPartition, AIOKafkaProducer] = {}
        try:  # all or nothing: heal takes over afresh what is not held
            for tp in assigned:
                producers[tp] = await start_fencing(self._settings, tp.partition)
            ledgers = await read_ledgers(self._reader, self._settings,
                                         [tp.partition for tp in assigned],
                                         self._settings.ledger_window)
            adopted = [OwnedPartition(tp, self.generation, self._settings, producers[tp],
                                      ledgers[tp.partition]) for tp in assigned]
            for partition in adopted:
                await self._seek_to_committed(partition)
        except BaseException:  # a failure or a cancellation (the worker stopping) half way
            for producer in producers.values():
                await stop(producer)
            raise
        self.owned.update((partition.tp, partition) for partition in adopted)
        self.num_unreadable_ledger_records += sum(p.ledger.num_skipped for p in adopted)
        return adopted

    async def _seek_to_committed(self, partition: OwnedPartition) -> None:
        assert self._consumer is not None
        committed = await self._consumer.committed(partition.tp)
        partition.tracker.committed = committed
        if committed is not None:
            self._consumer.seek(partition.tp, committed)
        else:
            await self._consumer.seek_to_beginning(partition.tp)

    async def let_go(self, revoked: Sequence[TopicPartition]) -> None:
        """The rebalance listener's (and close's): the group is taking these back."""
        self._rejoining = True
        async with self._changing:
            await self._let_go(revoked)

    async def _let_go(self, revoked: Sequence[TopicPartition]) -> None:
        for tp in revoked:
            partition = self.owned.pop(tp, None)
            if partition is None:
                continue
            runs = {o: r.handed_back() for o in partition.tracker.in_flight
                    if (r := partition.ledger.run(o)) is not None and r.running}
            try:
                await partition.transact(PartitionWrites(ledger=dict(runs)))
            except Exception as exc:  # the next owner then counts these runs as deaths
                log.warning("handing %s back failed: %r", tp, exc)
            await partition.close()

    async def heal(self) -> list[OwnedPartition]:
        """Take over afresh what is assigned but not held, or held by a lost producer; their
        unsettled jobs are fetched and run again, and nothing settled is repeated."""
        assert self._consumer is not None
        if self._changing.locked():  # a take-over or release is under way: not broken, busy
            return []
        async with self._changing:
            if self._rejoining:
                return []
            broken = [tp for tp in self._consumer.assignment()
                      if tp not in self.owned or self._needs_healing(self.owned[tp])]
            if not broken:
                return []
            log.warning("taking partitions %s over afresh", sorted(tp.partition for tp in broken))
            return await self._adopt(broken)

    def _needs_healing(self, partition: OwnedPartition) -> bool:
        """A fenced partition is left alone for two session timeouts: if another worker owns
        it, the group tells this one so by then (a rebalance revokes it); taking it back
        sooner would fence the rightful owner in turn."""
        if not partition.lost:
            return False
        if partition.fenced_at_s is None:
            return True
        patience_s = 2 * self._settings.session_timeout_ms / 1000
        return time.monotonic() - partition.fenced_at_s > patience_s

    async def close(self) -> None:
        await self.let_go(list(self.owned))
