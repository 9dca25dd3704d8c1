"""Producer and result poller for users' own code (and `llm-worker enqueue` / `result`).

Cancelling a job: `cancel()` sets `<prefix>:cancel:<id>` in Redis with a TTL. A worker that has
not started the job yet publishes it as `cancelled` without running it; a running job is aborted
within about `watch_interval_s`, its KV blocks freed. A job that already finished stays finished.
Cancellation needs Redis (for Kafka workers: kafka.mirror_results_to_redis).

A job id is bound to the job's content (schemas/digest.py). `RedisProducer.enqueue_many` binds
each id as it enqueues and refuses, before enqueuing anything, a job whose id is bound to other
content (JobIdConflict); workers dead-letter such a job on every queue. Ids derived from a file
should come from `content_job_id`, so changed content gets a new id. `wait` and `result` with
`expected_digest` refuse a stored result that answers other content.
"""

import asyncio
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from llm_worker.queues.errors import JobTooLarge, QueueError
from llm_worker.queues.kafka_conn import client_kwargs, ensure_topics
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.redis_conn import make_client, verify
from llm_worker.schemas import Job, JobStatus, Result, content_job_id, job_digest
from llm_worker.schemas.stored_result import read_result
from llm_worker.service_settings import KafkaSettings, RedisSettings

__all__ = ["JobIdConflict", "KafkaProducer", "RedisProducer", "content_job_id", "job_digest"]

DEFAULT_MAX_JOB_BYTES = 1 << 20
_BINDING_TTL_S = 7 * 24 * 3600  # the workers' default result_ttl_s, which binds as long


class JobIdConflict(QueueError):
    """The job id is bound to other content: a job sent before under this id, or the stored
    result, is for something else. Give this job a new id."""


def encode_job(job: Job, max_job_bytes: int = DEFAULT_MAX_JOB_BYTES) -> bytes:
    payload = job.model_dump_json(exclude_none=True).encode()
    if len(payload) > max_job_bytes:
        raise JobTooLarge(f"job {job.id} is {len(payload)} bytes, over {max_job_bytes}")
    return payload


class RedisProducer:
    """XADD jobs (fields `id`, `job`) and mark them `queued`; reuse one for many jobs."""

    def __init__(self, settings: RedisSettings, status_ttl_s: int = 7 * 24 * 3600,
                 binding_ttl_s: int = _BINDING_TTL_S) -> None:
        self._settings = settings
        self._keys = RedisKeys(settings.prefix)
        self._status_ttl_s = status_ttl_s
        self._binding_ttl_s = binding_ttl_s
        self._redis = make_client(settings)

    async def __aenter__(self) -> "RedisProducer":
        await verify(self._redis, self._settings)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._redis.aclose()

    async def enqueue_many(
        self, jobs: Iterable[Job], max_job_bytes: int = DEFAULT_MAX_JOB_BYTES
    ) -> list[str]:
        """Bind each id to its job's content, then enqueue them all; returns the ids in order.
        Raises JobIdConflict, enqueuing none, when an id is bound to other content (an id
        sent again with the same content is enqueued again: workers ack it without a rerun)."""
        jobs = list(jobs)
        payloads = [encode_job(job, max_job_bytes) for job in jobs]
        digests = [job_digest(job) for job in jobs]
        async with self._redis.pipeline(transaction=False) as pipe:
            for job, digest in zip(jobs, digests, strict=True):
                pipe.set(self._keys.claim(job.id), digest, nx=True, get=True,
                         ex=self._binding_ttl_s)
            bound = await pipe.execute()
        conflicts = [f"{job.id!r} (bound to {_text(b)})"
                     for job, digest, b in zip(jobs, digests, bound, strict=True)
                     if b is not None and _text(b) != digest]
        if conflicts:
            raise JobIdConflict("job ids already bound to other content, nothing enqueued: "
                                + ", ".join(conflicts[:10]) + "; give these jobs new ids")
        async with self._redis.pipeline(transaction=False) as pipe:
            for job, payload in zip(jobs, payloads, strict=True):
                # NX: re-enqueueing a finished job must not make its status look queued again.
                pipe.set(self._keys.status(job.id), JobStatus.QUEUED.value,
                         ex=self._status_ttl_s, nx=True)
                pipe.xadd(self._keys.jobs_stream, {"id": job.id, "job": payload})
            await pipe.execute()
        return [job.id for job in jobs]

    async def cancel(self, job_id: str, ttl_s: int = 24 * 3600) -> None:
        await self._redis.set(self._keys.cancel(job_id), b"1", ex=ttl_s)

    async def result(self, job_id: str, expected_digest: str | None = None) -> Result | None:
        """The job's terminal result, or None while it has none. With `expected_digest` (of
        the job you sent: `job_digest(job)`), JobIdConflict if the result answers other
        content."""
        raw = await self._redis.get(self._keys.result(job_id))
        if raw is None:
            return None
        found = read_result(raw)
        if expected_digest is not None and found.job_digest != expected_digest:
            raise JobIdConflict(
                f"the result stored under job id {job_id!r} answers other content "
                f"({found.job_digest}, not {expected_digest}): this id was used before for "
                "another job; send yours under a new id")
        return found

    async def status(self, job_id: str) -> JobStatus | None:
        raw = await self._redis.get(self._keys.status(job_id))
        if raw is None:
            return None
        return JobStatus(raw.decode() if isinstance(raw, bytes) else raw)

    async def wait(self, job_id: str, timeout_s: float, poll_interval_s: float = 0.1,
                   expected_digest: str | None = None) -> Result:
        """Poll until the job's terminal result exists; TimeoutError after `timeout_s`;
        JobIdConflict as `result` says."""
        deadline_s = time.monotonic() + timeout_s
        while (found := await self.result(job_id, expected_digest)) is None:
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


async def result(job_id: str, *, redis: RedisSettings | None = None,
                 expected_digest: str | None = None) -> Result | None:
    """The job's terminal result, or None while it has none (see RedisProducer.result)."""
    async with RedisProducer(redis or RedisSettings()) as producer:
        return await producer.result(job_id, expected_digest)


async def wait(
    job_id: str, *, redis: RedisSettings | None = None, timeout_s: float = 600.0,
    poll_interval_s: float = 0.1, expected_digest: str | None = None,
) -> Result:
    """Poll Redis until the job's terminal result exists (see RedisProducer.wait)."""
    async with RedisProducer(redis or RedisSettings()) as producer:
        return await producer.wait(job_id, timeout_s, poll_interval_s, expected_digest)


async def cancel(job_id: str, *, redis: RedisSettings | None = None) -> None:
    async with RedisProducer(redis or RedisSettings()) as producer:
        await producer.cancel(job_id)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
