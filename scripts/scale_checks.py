"""Did every job of a scripts/bench_scale.py run get exactly one terminal result? Read after the
workers have shut down, so a duplicate published during shutdown is counted too.

Redis: the results stream gets one entry per published terminal result (the worker's publish
script is first-wins), and the jobs stream's consumer group must have nothing pending or unread.
Kafka: the results topic is read from the beginning, every record counted (an at-least-once
redelivery would show here as a second record), and the group's committed offsets must reach
the end of the jobs topic.
"""

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from llm_worker.queues.kafka_conn import client_kwargs
from llm_worker.queues.keys import RedisKeys
from llm_worker.schemas import Job, JobStatus, Result
from llm_worker.service_settings import KafkaSettings


@dataclass
class DeliveryCheck:
    num_jobs: int
    num_exactly_one: int  # jobs with one terminal result, no more, no fewer
    num_missing: int
    num_duplicated: int  # jobs with more than one terminal result
    num_unexpected: int  # results for ids that are not in the workload
    num_not_completed: int  # terminal but failed / expired / cancelled
    num_short: int  # completed with fewer output tokens than max_tokens (ignore_eos is on)
    num_output_tokens: int
    num_unfinished: int  # Redis: pending + unread entries; Kafka: uncommitted job offsets
    num_dead_letters: int
    jobs_per_worker: dict[str, int] = field(default_factory=dict)
    missing_ids: list[str] = field(default_factory=list)  # the first few, to look up by hand

    @property
    def ok(self) -> bool:
        return (self.num_exactly_one == self.num_jobs and self.num_unexpected == 0
                and self.num_not_completed == 0 and self.num_short == 0
                and self.num_unfinished == 0 and self.num_dead_letters == 0)


def tally(jobs: list[Job], published: Counter[str], results: dict[str, Result],
          num_unfinished: int, num_dead_letters: int) -> DeliveryCheck:
    """`published`: terminal results per job id; `results`: one Result per job id."""
    wanted = {job.id: job.sampling.max_tokens for job in jobs}
    completed = [r for i, r in results.items() if i in wanted and r.status == JobStatus.COMPLETED]
    missing = [i for i in wanted if published[i] == 0]
    return DeliveryCheck(
        num_jobs=len(jobs),
        num_exactly_one=sum(1 for i in wanted if published[i] == 1),
        num_missing=len(missing),
        num_duplicated=sum(1 for i in wanted if published[i] > 1),
        num_unexpected=sum(1 for i in published if i not in wanted),
        num_not_completed=sum(1 for i, r in results.items()
                              if i in wanted and r.status != JobStatus.COMPLETED),
        num_short=sum(1 for r in completed if r.usage.completion_tokens < wanted[r.id]),
        num_output_tokens=sum(r.usage.completion_tokens for r in completed),
        num_unfinished=num_unfinished,
        num_dead_letters=num_dead_letters,
        jobs_per_worker=dict(sorted(Counter(r.worker_id or "?" for r in completed).items())),
        missing_ids=missing[:10],
    )


async def check_redis(redis: Redis, keys: RedisKeys, jobs: list[Job]) -> DeliveryCheck:
    entries: Any = await redis.xrange(keys.results_stream)  # [(entry id, {field: value})]
    published = Counter(fields[b"id"].decode() for _, fields in entries)
    raws = await redis.mget([keys.result(job.id) for job in jobs])
    results = {job.id: Result.model_validate_json(raw)
               for job, raw in zip(jobs, raws, strict=True) if raw is not None}
    pending = await redis.xpending(keys.jobs_stream, keys.group)
    unread = 0
    for group in await redis.xinfo_groups(keys.jobs_stream):
        if group["name"] in (keys.group, keys.group.encode()):
            unread = int(group.get("lag") or 0)
    return tally(jobs, published, results, int(pending["pending"]) + unread,
                 int(await redis.xlen(keys.dead_letter_stream)))


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    [described] = await admin.describe_topics([topic])
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def _read_values(consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                       timeout_s: float = 120.0) -> list[bytes]:
    """Every record's value on `partitions`, from the beginning to the end offsets now."""
    if not partitions:
        return []
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    end_offsets = await consumer.end_offsets(partitions)
    values: list[bytes] = []
    deadline_s = time.monotonic() + timeout_s
    while any([await consumer.position(p) < end_offsets[p] for p in partitions]):
        if time.monotonic() > deadline_s:
            raise TimeoutError(f"{partitions[0].topic}: not read to its end in {timeout_s:.0f} s")
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            values.extend(record.value or b"" for record in batch)
    return values


async def check_kafka(settings: KafkaSettings, jobs: list[Job]) -> DeliveryCheck:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False,
                                fetch_max_wait_ms=100, isolation_level="read_committed")
    await admin.start()
    await consumer.start()
    try:
        values = await _read_values(consumer, await _partitions(admin, settings.results_topic))
        dead = await _read_values(consumer, await _partitions(admin, settings.dead_letter_topic))
        jobs_partitions = await _partitions(admin, settings.jobs_topic)
        end_offsets = await consumer.end_offsets(jobs_partitions)
        committed = await admin.list_consumer_group_offsets(settings.group_id)
    finally:
        await consumer.stop()
        await admin.close()
    num_uncommitted = sum(end - (committed[p].offset if p in committed else 0)
                          for p, end in end_offsets.items())
    published: Counter[str] = Counter()
    results: dict[str, Result] = {}
    for value in values:
        result = Result.model_validate_json(value)
        published[result.id] += 1
        results.setdefault(result.id, result)
    return tally(jobs, published, results, num_uncommitted, len(dead))
