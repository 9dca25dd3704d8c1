"""The issue's must-show cases over the real single-node Kafka broker with the bundled model.
Results are mirrored to Redis, where "exactly one terminal result" is counted."""

import asyncio
import signal

import pytest
from aiokafka import AIOKafkaProducer

from llm_worker.client import KafkaProducer
from llm_worker.queues.factory import build_queue
from llm_worker.queues.kafka import KafkaJobSource
from llm_worker.schemas import ErrorCode, Job, JobStatus, SamplingParams, job_digest
from llm_worker.service import Service
from llm_worker.service_settings import KafkaSettings, RedisSettings, ServiceSettings
from tests.brokers import kafka_env, run_script
from tests.kafka_read import read_topic
from tests.service.jobs import (
    KILLERS,
    ONE_TOKEN,
    assert_match_expected,
    numbered_jobs,
    other_content,
)
from tests.service.redis_view import RedisView
from tests.service.workers import run_service_until, spawn_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(600)]


@pytest.fixture
def settings(kafka_bootstrap: str, redis_url: str, unique_name: str) -> ServiceSettings:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, jobs_topic=f"{unique_name}.jobs",
        results_topic=f"{unique_name}.results", dead_letter_topic=f"{unique_name}.dead",
        group_id=f"{unique_name}-workers", num_partitions=4, session_timeout_ms=6000,
        heartbeat_interval_ms=1000, mirror_results_to_redis=True,
    )
    return ServiceSettings(
        queue="kafka", worker_id="w-main", kafka=kafka,
        redis=RedisSettings(url=redis_url, prefix=unique_name),
        poll_timeout_s=0.1, watch_interval_s=0.1, shutdown_grace_s=5.0,
    )


def _service(settings: ServiceSettings, engine, **overrides) -> Service:
    settings = settings.model_copy(update=overrides)
    source, sink = build_queue(settings)
    return Service(settings, source, sink, engine, served_model="smollm2")


async def _enqueue(settings: ServiceSettings, jobs: list[Job]) -> list[str]:
    async with KafkaProducer(settings.kafka) as producer:
        return await producer.enqueue_many(jobs)


async def _has_all(view: RedisView, ids: list[str]) -> bool:
    return await view.num_results(ids) == len(ids)


async def test_200_jobs_exactly_once_equal_to_generate(settings, engine, expected_outputs) -> None:
    jobs = numbered_jobs(200, params=ONE_TOKEN)
    ids = await _enqueue(settings, jobs)
    view = RedisView(settings.redis.url, settings.redis.prefix)
    await run_service_until(_service(settings, engine, max_in_flight=32),
                            lambda: _has_all(view, ids), timeout_s=400)
    assert_match_expected(jobs, await view.results(ids), expected_outputs)
    assert await view.published_counts() == dict.fromkeys(ids, 1)
    records = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.results_topic, 200)
    assert sorted(r.key.decode() for r in records) == sorted(ids)
    await view.close()


async def test_poison_messages_and_worker_keeps_serving(settings, engine) -> None:
    kafka = settings.kafka
    raw = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await raw.start()
    await raw.send_and_wait(kafka.jobs_topic, b"\x00\xff\xfe", key=b"bytes")
    await raw.send_and_wait(kafka.jobs_topic, b"{not json", key=None)
    await raw.send_and_wait(kafka.jobs_topic, b'{"id": "schema", "prompt": 5}', key=b"schema")
    await raw.send_and_wait(kafka.jobs_topic, b'{"id": "huge", "prompt": "' + b"z" * 70_000,
                            key=b"huge")
    for job_id, (payload, _) in KILLERS.items():
        await raw.send_and_wait(kafka.jobs_topic, payload, key=job_id.encode())
    await _enqueue(settings, [Job(id="long", prompt="word " * 9000, sampling=ONE_TOKEN),
                              Job(id="model", prompt="hi", model="no-such-model")])
    good_jobs = numbered_jobs(4, "good", params=ONE_TOKEN)
    good = await _enqueue(settings, good_jobs)
    await raw.send_and_wait(kafka.jobs_topic, other_content(good_jobs[0]), key=b"good-0")
    await raw.stop()
    everything = ["bytes", "schema", "huge", "long", "model", *KILLERS, *good]
    view = RedisView(settings.redis.url, settings.redis.prefix)
    await run_service_until(_service(settings, engine, max_job_bytes=64 * 1024),
                            lambda: _has_all(view, everything), timeout_s=120)
    results = await view.results(everything)
    assert {i: results[i].error.code for i in everything[:5]} == {
        "bytes": ErrorCode.MALFORMED, "schema": ErrorCode.INVALID, "huge": ErrorCode.TOO_LARGE,
        "long": ErrorCode.PROMPT_TOO_LONG, "model": ErrorCode.UNKNOWN_MODEL,
    }
    assert {i: results[i].error.code for i in KILLERS} == {i: c for i, (_, c) in KILLERS.items()}
    assert all(results[i].status == JobStatus.COMPLETED for i in good)
    assert results["good-0"].job_digest == job_digest(good_jobs[0])
    dead = await read_topic(kafka.bootstrap_servers, kafka.dead_letter_topic, 2)
    reasons = sorted(dict(record.headers)["reason"].split(b":")[0] for record in dead)
    assert reasons == [ErrorCode.DUPLICATE_ID.encode(), b"malformed"]
    records = await read_topic(kafka.bootstrap_servers, kafka.results_topic, len(everything))
    assert sorted(r.key.decode() for r in records) == sorted(everything)  # once each
    await view.close()


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def test_backpressure_10000_queued(settings, engine) -> None:
    cap = 16
    ids = await _enqueue(settings, numbered_jobs(10_000, params=ONE_TOKEN, padding_bytes=4096))
    view = RedisView(settings.redis.url, settings.redis.prefix)
    service = _service(settings, engine, max_in_flight=cap)
    source = service._source
    assert isinstance(source, KafkaJobSource)
    samples: list[tuple[int, int]] = []  # (offsets fetched and unfinished, RSS bytes)

    async def sampled() -> bool:
        held = sum(len(tracker.in_flight) for tracker in source.trackers.values())
        samples.append((held, _rss_bytes()))
        return await view.num_results(ids[:200]) >= 150 and len(samples) > 100

    await run_service_until(service, sampled, timeout_s=400)
    assert service.peak_held <= cap
    assert max(held for held, _ in samples) <= cap
    rss_after_warmup, rss_end = samples[len(samples) // 4][1], samples[-1][1]
    assert rss_end - rss_after_warmup < 40 * 1024 * 1024, (rss_after_warmup, rss_end)
    assert await view.num_results(ids) < 1000  # the backlog stayed in Kafka
    await view.close()


async def test_two_workers_share_work_and_survive_sigkill(settings, tmp_path) -> None:
    kafka = settings.kafka
    base_env = {
        "LLM_WORKER_QUEUE": "kafka", "LLM_WORKER_MAX_IN_FLIGHT": "8",
        "LLM_WORKER_SHUTDOWN_GRACE_S": "20",
        "LLM_WORKER_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "LLM_WORKER_KAFKA__JOBS_TOPIC": kafka.jobs_topic,
        "LLM_WORKER_KAFKA__RESULTS_TOPIC": kafka.results_topic,
        "LLM_WORKER_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "LLM_WORKER_KAFKA__GROUP_ID": kafka.group_id, "LLM_WORKER_KAFKA__NUM_PARTITIONS": "4",
        "LLM_WORKER_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "LLM_WORKER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "LLM_WORKER_KAFKA__MIRROR_RESULTS_TO_REDIS": "true",
        "LLM_WORKER_REDIS__URL": settings.redis.url,
        "LLM_WORKER_REDIS__PREFIX": settings.redis.prefix,
    }
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    ids = await _enqueue(settings, numbered_jobs(64, params=params))
    view = RedisView(settings.redis.url, settings.redis.prefix)
    workers = {name: spawn_worker({**base_env, "LLM_WORKER_WORKER_ID": name},
                                  tmp_path / f"{name}.log") for name in ("wa", "wb")}
    try:
        async def both_finished_some() -> bool:
            done = {r.worker_id for r in (await view.results(ids)).values()}
            return {"wa", "wb"} <= done

        await wait_for(both_finished_some, 240, "both workers took work")
        workers["wa"].send_signal(signal.SIGKILL)  # dies holding in-flight jobs
        assert await view.num_results(ids) < len(ids)
        await wait_for(lambda: _has_all(view, ids), 300, "wb finishes everything")
        workers["wb"].send_signal(signal.SIGTERM)
        assert workers["wb"].wait(timeout=60) == 0
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
    results = await view.results(ids)
    assert all(r.status == JobStatus.COMPLETED for r in results.values())
    assert await view.published_counts() == dict.fromkeys(ids, 1)
    await view.close()


async def test_kafka_restart_mid_run_loses_nothing(settings, engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    ids = await _enqueue(settings, numbered_jobs(60, params=params))
    view = RedisView(settings.redis.url, settings.redis.prefix)
    runner = asyncio.create_task(run_service_until(
        _service(settings, engine, max_in_flight=8), lambda: _has_all(view, ids), timeout_s=400))

    async def some_done() -> bool:
        return await view.num_results(ids) >= 10

    await wait_for(some_done, 120, "10 results before the restart")
    await asyncio.to_thread(run_script, "start_kafka.sh", "stop", env=kafka_env())
    await asyncio.sleep(2.0)
    await asyncio.to_thread(run_script, "start_kafka.sh", env=kafka_env())
    await runner
    assert all(r.status == JobStatus.COMPLETED for r in (await view.results(ids)).values())
    assert await view.published_counts() == dict.fromkeys(ids, 1)
    await view.close()
