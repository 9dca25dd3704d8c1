"""Structured outputs through the worker over real Redis and Kafka with the bundled model:
constrained jobs come back within their constraint (JSON with `parsed`), bad constraints fail
alone with invalid_request, the other jobs complete."""

import pytest

from llm_worker.client import KafkaProducer, RedisProducer
from llm_worker.queues.factory import build_queue
from llm_worker.schemas import Job
from llm_worker.service import Service
from llm_worker.service_settings import KafkaSettings, RedisSettings, ServiceSettings
from tests.service.redis_view import RedisView
from tests.service.workers import run_service_until
from tests.structured.path_jobs import bad_jobs, check_results, good_jobs

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(600)]


def _jobs(prefix: str) -> list[Job]:
    return [*good_jobs(prefix), *bad_jobs(prefix)]


async def _run(settings: ServiceSettings, engine, jobs: list[Job]) -> None:
    source, sink = build_queue(settings)
    service = Service(settings, source, sink, engine, served_model="smollm2")
    view = RedisView(settings.redis.url, settings.redis.prefix)
    ids = [job.id for job in jobs]

    async def all_settled() -> bool:
        return await view.num_results(ids) == len(ids)

    try:
        await run_service_until(service, all_settled, timeout_s=500)
        check_results(jobs[0].id.split("-")[0], await view.results(ids))
    finally:
        await view.close()


async def test_redis(redis_url, unique_name, engine) -> None:
    settings = ServiceSettings(
        queue="redis", worker_id="w-structured", poll_timeout_s=0.1, watch_interval_s=0.1,
        redis=RedisSettings(url=redis_url, prefix=unique_name),
    )  # fmt: skip
    jobs = _jobs("redis")
    async with RedisProducer(settings.redis) as producer:
        await producer.enqueue_many(jobs)
    await _run(settings, engine, jobs)


async def test_kafka(kafka_bootstrap, redis_url, unique_name, engine) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, jobs_topic=f"{unique_name}.jobs",
        results_topic=f"{unique_name}.results", dead_letter_topic=f"{unique_name}.dead",
        group_id=f"{unique_name}-workers", num_partitions=2, mirror_results_to_redis=True,
    )  # fmt: skip
    settings = ServiceSettings(
        queue="kafka", worker_id="w-structured", kafka=kafka, poll_timeout_s=0.1,
        watch_interval_s=0.1, redis=RedisSettings(url=redis_url, prefix=unique_name),
    )  # fmt: skip
    jobs = _jobs("kafka")
    async with KafkaProducer(settings.kafka) as producer:
        await producer.enqueue_many(jobs)
    await _run(settings, engine, jobs)
