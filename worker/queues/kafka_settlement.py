"""Kafka's settlement: each partition's outcomes in one transaction of that partition's producer
(results, dead letters, done records in the ledger, the new consumed offset), then the Redis
mirror, which only ever copies a committed record.

An outcome of a partition this worker no longer owns is dropped: nothing of it was committed,
so the partition's next owner runs the job and writes its one record.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import TopicPartition

from llm_worker.queues.kafka_ledger import DoneRecord
from llm_worker.queues.kafka_partition import KafkaHandle, OwnedPartition, PartitionWrites
from llm_worker.queues.kafka_results import KafkaResultSink
from llm_worker.queues.protocol import Delivery, Outcome

log = logging.getLogger(__name__)


class KafkaSettlement:
    def __init__(self, owned: dict[TopicPartition, OwnedPartition],
                 sink: KafkaResultSink | None) -> None:
        self._owned = owned  # the source's partitions, kept current by its rebalance listener
        self._sink = sink if sink is not None and sink.has_mirror else None

    async def commit(self, outcomes: Sequence[Outcome]) -> None:
        writes: dict[OwnedPartition, PartitionWrites] = defaultdict(PartitionWrites)
        for outcome in outcomes:
            for delivery in outcome.deliveries:
                handle = delivery.handle
                assert isinstance(handle, KafkaHandle)
                partition = self._owned.get(handle.partition)
                if partition is None or partition.generation != handle.generation:
                    continue  # moved on: its next owner settles it
                if handle.offset not in partition.tracker.in_flight:
                    continue  # settled already: a retry after another partition's failure
                add_outcome(writes[partition], outcome, delivery, handle.offset,
                            keep_result=self._sink is not None)
        done = await asyncio.gather(*(p.transact(w) for p, w in writes.items()),
                                    return_exceptions=True)
        await self.mirror([p for p, ok in zip(writes, done, strict=True) if ok is True])
        refused = next((e for e in done if isinstance(e, BaseException)), None)
        if refused is not None:  # the caller retries outcome by outcome; settled ones are skipped
            raise refused

    async def mirror(self, partitions: Sequence[OwnedPartition]) -> None:
        """Copy committed results the Redis mirror may lack (this batch's, and any an earlier
        owner committed but died before mirroring); best effort, tried again next time."""
        if self._sink is None:
            return
        pending = {p: p.ledger.unmirrored() for p in partitions}
        results = [r for by_offset in pending.values() for r in by_offset.values()]
        if not results:
            return
        try:
            await self._sink.publish_many(results)
        except Exception as exc:
            log.warning("mirroring %d results to Redis failed, will retry: %r", len(results), exc)
            return
        for partition, by_offset in pending.items():
            partition.mirrored(list(by_offset))


def add_outcome(writes: PartitionWrites, outcome: Outcome, delivery: Delivery, offset: int,
                keep_result: bool) -> None:
    """One delivery's share of an outcome: the result once (with the first delivery; copies of
    a job share its partition), its dead letter, and a done record and the ack."""
    result = outcome.result
    first = delivery is outcome.deliveries[0]
    if first and result is not None:
        writes.results.append(result)
    if outcome.dead_letter is not None:
        writes.dead_letters.append((delivery, outcome.dead_letter))
    job_id = result.id if result is not None else None
    digest = result.job_digest if result is not None else None
    writes.ledger[offset] = DoneRecord(job_id, digest, result if first and keep_result else None)
    writes.settled.append(offset)
