"""Read a whole Kafka topic from the beginning (tests' view of results and dead letters), and a
consumer group's committed offsets.

read_committed, as every consumer of worker output must read: a record of an aborted
transaction (a worker fenced or killed mid-settlement) is not a result."""

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def read_topic(bootstrap: str, topic: str, min_records: int, timeout_s: float = 20.0,
                     ) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic)
                                                          or await _partitions(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end_offsets = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + timeout_s
        while loop.time() < deadline_s:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            done = all([await consumer.position(p) >= end_offsets[p] for p in partitions])
            if len(records) >= min_records and done:
                break
            if done:
                end_offsets = await consumer.end_offsets(partitions)
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def committed_offsets(bootstrap: str, group_id: str) -> dict[int, int]:
    """The group's committed offset of each partition that has one (any topic's)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}
