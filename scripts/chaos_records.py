"""What a broker holds after a chaos run (scripts/kill_trials.py, scripts/poison_corpus.py):
every terminal record the workers committed, counted per job id, and the dead letters.

Kafka is read twice: read_committed (what a consumer of results sees: the records that count)
and read_uncommitted (which also shows records of transactions that were aborted when a worker
was killed or fenced mid-settlement, never seen by a read_committed consumer)."""

from collections import Counter
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from chaos_setup import Namespace

from llm_worker.queues.kafka_conn import client_kwargs
from llm_worker.queues.keys import RedisKeys
from llm_worker.schemas import Result
from llm_worker.service_settings import KafkaSettings


@dataclass
class Records:
    result_counts: Counter[str] = field(default_factory=Counter)  # committed records per job id
    results: dict[str, Result] = field(default_factory=dict)  # the last one per job id
    dead_letters: list[dict[str, str]] = field(default_factory=list)  # reason, job id, ...
    num_aborted: int = 0  # Kafka: result records of aborted transactions

    def duplicated(self) -> list[str]:
        return sorted(job_id for job_id, n in self.result_counts.items() if n > 1)

    def dead_reasons(self) -> Counter[str]:
        return Counter(d["reason"].split(":", 1)[0] for d in self.dead_letters)


async def records_of(ns: Namespace) -> Records:
    return await (redis_records(ns.redis.url, ns.redis.prefix) if ns.queue == "redis"
                  else kafka_records(ns.kafka))


async def unsettled_of(ns: Namespace) -> int:
    """Messages of the run's queue its workers have not settled (acked, or committed past)."""
    return await (redis_unsettled(ns.redis.url, ns.redis.prefix) if ns.queue == "redis"
                  else kafka_unsettled(ns.kafka))


async def redis_records(url: str, prefix: str) -> Records:
    """The results stream (one entry per terminal result the store accepted: first wins), the
    stored results, and the dead-letter stream."""
    client = aioredis.Redis.from_url(url)
    keys = RedisKeys(prefix)
    try:
        records = Records()
        for _, fields in await client.xrange(keys.results_stream):
            records.result_counts[fields[b"id"].decode()] += 1
        ids = list(records.result_counts)
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            for job_id, raw in zip(chunk, await client.mget([keys.result(i) for i in chunk]),
                                   strict=True):
                if raw is not None:
                    records.results[job_id] = Result.model_validate_json(raw)
        for _, fields in await client.xrange(keys.dead_letter_stream):
            records.dead_letters.append({
                "reason": fields[b"reason"].decode(errors="replace"),
                "job_id": fields.get(b"job_id", b"").decode(errors="replace")})
        return records
    finally:
        await client.aclose()


async def kafka_records(settings: KafkaSettings) -> Records:
    records = Records()
    for record in await _read_topic(settings, settings.results_topic, "read_committed"):
        job_id = record.key.decode()
        records.result_counts[job_id] += 1
        records.results[job_id] = Result.model_validate_json(record.value)
    for record in await _read_topic(settings, settings.dead_letter_topic, "read_committed"):
        headers = {name: value.decode(errors="replace") for name, value in record.headers}
        records.dead_letters.append({"reason": headers.get("reason", ""),
                                     "job_id": (record.key or b"").decode(errors="replace")})
    everything = await _read_topic(settings, settings.results_topic, "read_uncommitted")
    records.num_aborted = len(everything) - records.result_counts.total()
    return records


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    if not consumer.partitions_for_topic(topic):  # a fresh client may not have its metadata
        await consumer._client.force_metadata_update()
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]


async def _read_topic(settings: KafkaSettings, topic: str, isolation_level: str) -> list:
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False,
                                isolation_level=isolation_level)
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic)
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        found: list = []
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            for batch in (await consumer.getmany(*remaining, timeout_ms=500)).values():
                found.extend(batch)
            remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
        return found
    finally:
        await consumer.stop()


async def redis_unsettled(url: str, prefix: str) -> int:
    """Jobs-stream entries the workers' group has not acked: pending plus never delivered."""
    client = aioredis.Redis.from_url(url)
    keys = RedisKeys(prefix)
    try:
        for group in await client.xinfo_groups(keys.jobs_stream):
            if group["name"].decode() == keys.group:
                return int(group["pending"]) + int(group["lag"] or 0)
        return await client.xlen(keys.jobs_stream)  # no group: nothing was ever read
    finally:
        await client.aclose()


async def kafka_unsettled(settings: KafkaSettings) -> int:
    """Jobs-topic messages past the workers' group's committed offsets."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        partitions = await _partitions(consumer, settings.jobs_topic)
        end = await consumer.end_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(settings.group_id,
                                                            partitions=partitions)
        return sum(end[tp] - max(committed[tp].offset, 0) if tp in committed else end[tp]
                   for tp in partitions)
    finally:
        await consumer.stop()
        await admin.close()
