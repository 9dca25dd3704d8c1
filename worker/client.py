"""Producer and result poller for users' own code (and `llm-worker enqueue` / `result`).

Cancelling a job: `cancel()` sets `<prefix>:cancel:<id>` in Redis with a TTL. A worker that has
not started the job yet publishes it as `cancelled` without running it; a running job is aborted
within about `watch_interval_s`, its KV blocks freed. A job that already finished stays finished.
Cancellation needs Redis (for Kafka workers: kafka.mirror_results_to_redis).
"""

import asyncio
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from llm_worker.queues.errors import JobTooLarge
from llm_worker.queues.kafka_conn import client_kwargs, ensure_topics
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.redis_conn import make_client, verify
from llm_worker.schemas import Job, JobStatus, Result
from llm_worker.service_settings import KafkaSettings, RedisSettings

DEFAULT_MAX_JOB_BYTES = 1 << 20


def encode_job(job: Job, max_job_bytes: int = DEFAULT_MAX_JOB_BYTES) -> bytes:
    payload = job.model_dump_json(exclude_none=True).encode()
    if len(payload) > max_job_bytes:
        raise JobTooLarge(f"job {job.id} is {len(payload)} bytes, over {max_job_bytes}")
    return payload


class RedisProducer:
    """XADD jobs (fields `id`, `job`) and mark them `queued`; reuse one for many jobs."""

    def __init__(self, settings: RedisSettings, status_ttl_s: int = 7 * 24 * 3600) -> None:
        self._settings = settings
        self._keys = RedisKeys(settings.prefix)
        self._status_ttl_s = status_ttl_s
        self._redis = make_client(settings)

    async def __aenter__(self) -> "RedisProducer":
        await verify(self._redis, self._settings)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._redis.aclose()

    async def enqueue_many(
        self, jobs: Iterable[Job], max_job_bytes: int = DEFAULT_MAX_JOB_BYTES
    ) -> list[str]:
        """One round trip for all of them; returns the job ids in order."""
        ids = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                payload = encode_job(job, max_job_bytes)
                # NX: re-enqueueing a finished job must not make its status look queued again.
                pipe.set(self._keys.status(job.id), JobStatus.QUEUED.value,
                         ex=self._status_ttl_s, nx=True)
                pipe.xadd(self._keys.jobs_stream, {"id": job.id, "job": payload})
                ids.append(job.id)
            await pipe.execute()
        return ids

    async def cancel(self, job_id: str, ttl_s: int = 24 * 3600) -> None:
        await self._redis.set(self._keys.cancel(job_id), b"1", ex=ttl_s)

    async def result(self, job_id: str) -> Result | None:
        raw = await self._redis.get(self._keys.result(job_id))
        return Result.model_validate_json(raw) if raw is not None else None

    async def status(self, job_id: str) -> JobStatus | None:
        raw = await self._redis.get(self._keys.status(job_id))
        if raw is None:
            return None
        return JobStatus(raw.decode() if isinstance(raw, bytes) else raw)

    async def wait(self, job_id: str, timeout_s: float, poll_interval_s: float = 0.1) -> Result:
        """Poll until the job's terminal result exists; TimeoutError after `timeout_s`."""
        deadline_s = time.monotonic() + timeout_s
        while (found := await self.result(job_id)) is None:
            if time.monotonic() >= deadline_s:
                raise TimeoutError(f"no result for job {job_id} within {timeout_s} s")
            await asyncio.sleep(poll_interval_s)
        return found


class KafkaProducer:
    """Jobs to the jobs topic keyed by job id (idempotent producer, acks=all)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            **client_kwargs(settings), enable_idempotence=True, acks="all"
        )

    async def __aenter__(self) -> "KafkaProducer":
        await ensure_topics(self._settings)
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def enqueue_many(
        self, jobs: Iterable[Job], max_job_bytes: int = DEFAULT_MAX_JOB_BYTES
    ) -> list[str]:
        pending, ids = [], []
        for job in jobs:
            payload = encode_job(job, max_job_bytes)
            pending.append(await self._producer.send(
                self._settings.jobs_topic, payload, key=job.id.encode()
            ))
            ids.append(job.id)
        await asyncio.gather(*pending)
        return ids


async def enqueue(
    job: Job, *, redis: RedisSettings | None = None, kafka: KafkaSettings | None = None,
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
) -> str:
    """Put one job on Redis (default) or Kafka; returns its id."""
    if kafka is not None:
        async with KafkaProducer(kafka) as kafka_producer:
            await kafka_producer.enqueue_many([job], max_job_bytes)
    else:
        async with RedisProducer(redis or RedisSettings()) as redis_producer:
            await redis_producer.enqueue_many([job], max_job_bytes)
    return job.id


async def result(job_id: str, *, redis: RedisSettings | None = None) -> Result | None:
    """The job's terminal result, or None while it has none."""
    async with RedisProducer(redis or RedisSettings()) as producer:
        return await producer.result(job_id)


async def wait(
    job_id: str, *, redis: RedisSettings | None = None, timeout_s: float = 600.0,
    poll_interval_s: float = 0.1,
) -> Result:
    """Poll Redis until the job's terminal result exists; TimeoutError after `timeout_s`."""
    async with RedisProducer(redis or RedisSettings()) as producer:
        return await producer.wait(job_id, timeout_s, poll_interval_s)


async def cancel(job_id: str, *, redis: RedisSettings | None = None) -> None:
    async with RedisProducer(redis or RedisSettings()) as producer:
        await producer.cancel(job_id)
