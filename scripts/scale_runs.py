"""One measured run of scripts/bench_scale.py: N workers on a fresh Redis stream or Kafka topic,
the jobs released at once, the clock from the release to the last result, then a SIGTERM
shutdown and the exactly-one check (see bench_scale.py for why the clock runs where it does)."""

import argparse
import asyncio
import dataclasses
import time
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis
from scale_checks import DeliveryCheck, check_kafka, check_redis
from scale_fleet import Fleet, FleetSpec, start_fleet
from tqdm import tqdm

from llm_worker.client import KafkaProducer, RedisProducer, encode_job
from llm_worker.queues.kafka_conn import client_kwargs, ensure_topics
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.redis_conn import make_client
from llm_worker.schemas import Job, JobStatus
from llm_worker.service_settings import KafkaSettings, RedisSettings


@dataclass
class Run:
    queue: str
    num_workers: int
    ready_s: float  # worker start to all ready (Kafka: and the group Stable)
    enqueue_s: float  # producing the jobs (Redis: before the clock; Kafka: on it)
    wall_s: float  # the clock: release of the jobs to the last result
    check: DeliveryCheck
    exit_codes: list[int | None]
    num_killed: int  # workers that needed SIGKILL after SIGTERM
    efficiency: float | None = None  # throughput(N) / (N x throughput(1)), set by the report

    @property
    def output_tok_per_s(self) -> float:
        return self.check.num_output_tokens / self.wall_s

    @property
    def ok(self) -> bool:
        return self.check.ok and self.num_killed == 0 and all(c == 0 for c in self.exit_codes)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "output_tok_per_s": self.output_tok_per_s, "ok": self.ok,
                "exactly_one_terminal_result": self.check.num_exactly_one == self.check.num_jobs}


async def _wait_for_results(redis: Redis, stream: str, num_jobs: int, fleet: Fleet,
                            args: argparse.Namespace) -> float:
    """perf_counter() when `stream` first holds `num_jobs` entries. Polls its length (one
    integer), so the poller costs the workers' Redis next to nothing."""
    deadline_s = time.perf_counter() + args.result_timeout_s
    next_alive_check_s = 0.0
    with tqdm(total=num_jobs, unit="job", desc="results", disable=args.no_progress) as bar:
        while (num_done := int(await redis.xlen(stream))) < num_jobs:
            bar.update(num_done - bar.n)
            now_s = time.perf_counter()
            if now_s >= next_alive_check_s:
                fleet.check_alive()
                next_alive_check_s = now_s + 1.0
            if now_s > deadline_s:
                raise TimeoutError(f"{num_done}/{num_jobs} results after {args.result_timeout_s} s")
            await asyncio.sleep(0.02)
        last_s = time.perf_counter()
        bar.update(num_done - bar.n)
    return last_s


async def _delete_keys(redis: Redis, prefix: str) -> None:
    batch = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    for start in range(0, len(batch), 1000):
        await redis.unlink(*batch[start:start + 1000])


async def _hold(redis: Redis, settings: RedisSettings, jobs: list[Job]) -> float:
    """Enqueue `jobs` where no worker sees them yet: the group starts past them. A second group
    at the stream's start keeps the workers' trimming (by the oldest entry any group still
    needs) from deleting them while the workers load. Returns the seconds enqueueing took."""
    keys = RedisKeys(settings.prefix)
    start_s = time.perf_counter()
    async with RedisProducer(settings) as producer:
        await producer.enqueue_many(jobs)
    enqueue_s = time.perf_counter() - start_s
    await redis.xgroup_create(keys.jobs_stream, keys.group, id="$", mkstream=True)
    await redis.xgroup_create(keys.jobs_stream, f"{settings.prefix}:hold", id="0")
    return enqueue_s


async def _release(redis: Redis, keys: RedisKeys, last_job: Job) -> None:
    """Every held job and the last one become readable at once; the XADD wakes the workers'
    blocked XREADGROUPs (XGROUP SETID alone does not)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xgroup_setid(keys.jobs_stream, keys.group, "0")
        pipe.set(keys.status(last_job.id), JobStatus.QUEUED.value, nx=True, ex=24 * 3600)
        pipe.xadd(keys.jobs_stream, {"id": last_job.id, "job": encode_job(last_job)})
        await pipe.execute()


async def run_redis(args: argparse.Namespace, spec: FleetSpec, num_workers: int,
                    jobs: list[Job], stem: str) -> Run:
    settings = RedisSettings(url=args.redis_url, prefix=stem)
    keys = RedisKeys(stem)
    redis = make_client(settings)
    try:
        enqueue_s = await _hold(redis, settings, jobs[:-1])
        env = {"LLM_WORKER_REDIS__PREFIX": stem}
        fleet = start_fleet(dataclasses.replace(spec, service_env={**spec.service_env, **env}),
                            num_workers, stem)
        try:
            ready_s = await asyncio.to_thread(fleet.wait_ready, args.ready_timeout_s)
            start_s = time.perf_counter()
            await _release(redis, keys, jobs[-1])
            last_s = await _wait_for_results(redis, keys.results_stream, len(jobs), fleet, args)
        finally:
            await asyncio.to_thread(fleet.stop)
        check = await check_redis(redis, keys, jobs)
        if not args.keep_data:
            await _delete_keys(redis, stem)
    finally:
        await redis.aclose()
    return Run("redis", num_workers, ready_s, enqueue_s, last_s - start_s, check,
               fleet.exit_codes, fleet.num_killed)


async def _wait_for_group(settings: KafkaSettings, fleet: Fleet, timeout_s: float) -> float:
    """Seconds until the consumer group is Stable with exactly the fleet's workers in it, so no
    rebalance moves partitions once the jobs flow."""
    wanted = sorted(w.worker_id for w in fleet.workers)
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    start_s = time.monotonic()
    try:
        while True:
            reply = (await admin.describe_consumer_groups([settings.group_id]))[0].to_object()
            group = reply["groups"][0]
            members = sorted(m["client_id"] for m in group["members"])
            if group["state"] == "Stable" and members == wanted:
                return time.monotonic() - start_s
            fleet.check_alive()
            if time.monotonic() - start_s > timeout_s:
                raise TimeoutError(f"group {settings.group_id}: {group['state']}, {members}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _kafka_env(settings: KafkaSettings) -> dict[str, str]:
    fields = ("bootstrap_servers", "jobs_topic", "results_topic", "dead_letter_topic",
              "group_id", "num_partitions", "mirror_results_to_redis")
    values = settings.model_dump(include=set(fields))
    return {f"LLM_WORKER_KAFKA__{name.upper()}": str(value).lower() if isinstance(value, bool)
            else str(value) for name, value in values.items()}


async def _delete_topics(settings: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.delete_topics(
            [settings.jobs_topic, settings.results_topic, settings.dead_letter_topic])
    finally:
        await admin.close()


async def run_kafka(args: argparse.Namespace, spec: FleetSpec, num_workers: int,
                    jobs: list[Job], stem: str) -> Run:
    if args.kafka_partitions < num_workers:
        raise ValueError(f"--kafka-partitions {args.kafka_partitions} < {num_workers} workers: "
                         "some would get no partition")
    kafka = KafkaSettings(
        bootstrap_servers=args.kafka_bootstrap, jobs_topic=f"{stem}.jobs",
        results_topic=f"{stem}.results", dead_letter_topic=f"{stem}.dead",
        group_id=f"{stem}-workers", num_partitions=args.kafka_partitions,
        mirror_results_to_redis=True,  # where the poller (and the clock) sees results
    )
    await ensure_topics(kafka)
    redis = make_client(RedisSettings(url=args.redis_url, prefix=stem))
    env = {"LLM_WORKER_REDIS__PREFIX": stem, **_kafka_env(kafka)}
    fleet = start_fleet(dataclasses.replace(spec, service_env={**spec.service_env, **env}),
                        num_workers, stem)
    try:
        ready_s = await asyncio.to_thread(fleet.wait_ready, args.ready_timeout_s)
        ready_s += await _wait_for_group(kafka, fleet, args.ready_timeout_s)
        async with KafkaProducer(kafka) as producer:
            start_s = time.perf_counter()
            await producer.enqueue_many(jobs)
            enqueue_s = time.perf_counter() - start_s
            stream = RedisKeys(stem).results_stream
            last_s = await _wait_for_results(redis, stream, len(jobs), fleet, args)
    finally:
        await asyncio.to_thread(fleet.stop)
    try:
        check = await check_kafka(kafka, jobs)
        if not args.keep_data:
            await _delete_topics(kafka)
            await _delete_keys(redis, stem)
    finally:
        await redis.aclose()
    return Run("kafka", num_workers, ready_s, enqueue_s, last_s - start_s, check,
               fleet.exit_codes, fleet.num_killed)
