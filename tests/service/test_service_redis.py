"""The issue's must-show cases over a real redis-server with the bundled model."""

import asyncio
import json
import logging
import signal

import pytest

from llm_worker.client import RedisProducer
from llm_worker.queues.factory import build_queue
from llm_worker.queues.protocol import Attempts, Run
from llm_worker.queues.redis_streams import RedisStreamSource
from llm_worker.schemas import ErrorCode, Job, JobStatus, SamplingParams, job_digest
from llm_worker.service import Service
from llm_worker.service_settings import RedisSettings, ServiceSettings
from tests.brokers import redis_env, run_script
from tests.service.faults import tiny_engine
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


def _settings(url: str, prefix: str, **overrides) -> ServiceSettings:
    defaults = dict(queue="redis", worker_id="w-main", poll_timeout_s=0.1, watch_interval_s=0.1,
                    claim_idle_ms=2000, shutdown_grace_s=5.0)
    return ServiceSettings(redis=RedisSettings(url=url, prefix=prefix), **{**defaults, **overrides})


def _service(settings: ServiceSettings, engine) -> Service:
    source, sink = build_queue(settings)
    return Service(settings, source, sink, engine, served_model="smollm2")


async def _enqueue(settings: ServiceSettings, jobs: list[Job]) -> list[str]:
    async with RedisProducer(settings.redis) as producer:
        return await producer.enqueue_many(jobs)


async def test_200_jobs_exactly_once_equal_to_generate(redis_url, unique_name, engine,
                                                       expected_outputs) -> None:
    settings = _settings(redis_url, unique_name, max_in_flight=32)
    jobs = numbered_jobs(200, params=ONE_TOKEN)
    ids = await _enqueue(settings, jobs)
    view = RedisView(redis_url, unique_name)
    await run_service_until(_service(settings, engine),
                            lambda: _has_all(view, ids), timeout_s=400)
    assert_match_expected(jobs, await view.results(ids), expected_outputs)
    assert await view.published_counts() == dict.fromkeys(ids, 1)
    assert await view.pending_by_consumer() == {"w-main": 0}
    await view.close()


async def _has_all(view: RedisView, ids: list[str]) -> bool:
    return await view.num_results(ids) == len(ids)


async def test_poison_messages_and_worker_keeps_serving(redis_url, unique_name, engine) -> None:
    settings = _settings(redis_url, unique_name, max_job_bytes=64 * 1024)
    view = RedisView(redis_url, unique_name)
    stream = view.keys.jobs_stream
    raw = view.redis
    await raw.xadd(stream, {"id": "bytes", "job": b"\x00\xff\xfe"})
    await raw.xadd(stream, {"nothing": b"here"})
    await raw.xadd(stream, {"id": "schema", "job": b'{"id": "schema", "prompt": 5}'})
    await raw.xadd(stream, {"id": "huge", "job": b'{"id": "huge", "prompt": "' + b"z" * 70_000})
    await _enqueue(settings, [
        Job(id="long", prompt="word " * 9000, sampling=ONE_TOKEN),
        Job(id="model", prompt="hi", model="no-such-model"),
    ])
    for job_id, (payload, _) in KILLERS.items():
        await raw.xadd(stream, {"id": job_id, "job": payload})
    good_jobs = numbered_jobs(4, "good", params=ONE_TOKEN)
    good = await _enqueue(settings, good_jobs)
    await raw.xadd(stream, {"id": "good-0", "job": other_content(good_jobs[0])})
    everything = ["bytes", "schema", "huge", "long", "model", *KILLERS, *good]
    await run_service_until(_service(settings, engine),
                            lambda: _has_all(view, everything), timeout_s=120)
    results = await view.results(everything)
    assert {i: results[i].error.code for i in everything[:5]} == {
        "bytes": ErrorCode.MALFORMED, "schema": ErrorCode.INVALID, "huge": ErrorCode.TOO_LARGE,
        "long": ErrorCode.PROMPT_TOO_LONG, "model": ErrorCode.UNKNOWN_MODEL,
    }
    assert {i: results[i].error.code for i in KILLERS} == {i: c for i, (_, c) in KILLERS.items()}
    assert all(results[i].status == JobStatus.COMPLETED for i in good)
    assert results["good-0"].job_digest == job_digest(good_jobs[0])
    await wait_for(lambda: _num_dead(view, 2), 30, "the conflicting copy is dead-lettered")
    first, conflict = (fields for _, fields in await raw.xrange(view.keys.dead_letter_stream))
    assert first[b"reason"].startswith(b"malformed: stream entry has no `job` field")
    assert conflict[b"reason"].startswith(ErrorCode.DUPLICATE_ID.encode())
    assert await view.published_counts() == dict.fromkeys(everything, 1)
    await view.close()


async def _num_dead(view: RedisView, n: int) -> bool:
    return await view.redis.xlen(view.keys.dead_letter_stream) >= n


async def test_an_unreadable_run_record_neither_blocks_the_stream_nor_loses_its_job(
        redis_url, unique_name, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(redis_url, unique_name)
    jobs = [Job(id=f"job-{i}", prompt_token_ids=[10 + i, 20, 30], sampling=ONE_TOKEN)
            for i in range(4)]
    ids = await _enqueue(settings, jobs)
    dead, _ = build_queue(settings)  # a worker that took them all and died running them
    await dead.start()
    deliveries = await dead.receive(4, 0.1)
    await dead.started([Run(d, j.id, job_digest(j), Attempts(), solo=False)
                        for d, j in zip(deliveries, jobs, strict=True)])
    await dead.close()
    view = RedisView(redis_url, unique_name)
    await view.redis.hset(view.keys.runs, str(deliveries[2].handle), b"{not json")
    source, sink = build_queue(settings)
    service = Service(settings, source, sink, tiny_engine(), "tiny-llama")
    with caplog.at_level(logging.WARNING):
        await run_service_until(service, lambda: _has_all(view, ids), timeout_s=60)
    results = await view.results(ids)
    assert all(results[i].status == JobStatus.COMPLETED for i in ids)
    assert await view.published_counts() == dict.fromkeys(ids, 1)
    assert await view.pending_by_consumer() == {"w-main": 0}
    assert await view.redis.hlen(view.keys.runs) == 0
    assert isinstance(source, RedisStreamSource) and source.num_unreadable_run_records == 1
    assert [m for r in caplog.records if "unreadable run record" in (m := r.getMessage())]
    await view.close()


async def test_stored_results_of_a_newer_version_settle_and_unreadable_ones_block_nothing(
        redis_url, unique_name, caplog: pytest.LogCaptureFixture) -> None:
    """Mid rolling upgrade: job-1's stored result has fields a newer worker added, job-2's key
    holds bytes that are no result. job-1 counts as done (acked, not run again), job-2 runs
    again and its result replaces those bytes, and the jobs delivered beside them run as usual:
    nothing hands the batch back."""
    settings = _settings(redis_url, unique_name)
    jobs = [Job(id=f"job-{i}", prompt_token_ids=[10 + i, 20, 30], sampling=ONE_TOKEN)
            for i in range(4)]
    view = RedisView(redis_url, unique_name)
    newer = {"schema_version": 1, "id": "job-1", "status": "completed", "text": "earlier",
             "job_digest": job_digest(jobs[1]), "usage": {"prompt_tokens": 3,
             "reasoning_tokens": 0}, "reasoning": None}  # fmt: skip
    await view.redis.set(view.keys.result("job-1"), json.dumps(newer))
    await view.redis.set(view.keys.result("job-2"), b"{not json")
    ids = await _enqueue(settings, jobs)
    ran = ["job-0", "job-3"]
    source, sink = build_queue(settings)
    service = Service(settings, source, sink, tiny_engine(), "tiny-llama")

    async def settled() -> bool:
        published = await view.published_counts()
        return (all(published[i] for i in [*ran, "job-2"])
                and await view.pending_by_consumer() == {"w-main": 0})

    with caplog.at_level(logging.WARNING):
        await run_service_until(service, settled, timeout_s=30)
    assert await view.redis.xlen(view.keys.jobs_stream) == len(ids)
    results = await view.results(ran)
    assert all(results[i].status == JobStatus.COMPLETED for i in ran)
    assert await view.published_counts() == {"job-0": 1, "job-2": 1, "job-3": 1}
    assert json.loads(await view.redis.get(view.keys.result("job-1"))) == newer
    assert (await view.results(["job-2"]))["job-2"].status == JobStatus.COMPLETED
    assert [m for r in caplog.records
            if "job-2 is unreadable" in (m := r.getMessage())]  # fmt: skip
    await view.close()


async def test_redis_restart_mid_run_loses_nothing(private_redis, unique_name, engine) -> None:
    url, env = private_redis
    settings = _settings(url, unique_name, max_in_flight=8)
    ids = await _enqueue(settings, numbered_jobs(60, params=SamplingParams(
        temperature=0.0, max_tokens=4, ignore_eos=True)))
    view = RedisView(url, unique_name)
    runner = asyncio.create_task(run_service_until(
        _service(settings, engine), lambda: _has_all(view, ids), timeout_s=300))
    await wait_for(lambda: _at_least(view, ids, 10), 120, "10 results before the restart")
    run_script("start_redis.sh", "stop", env=env)
    await asyncio.sleep(2.0)  # the worker sees refused connections and backs off
    run_script("start_redis.sh", env=env)
    await runner
    assert all(r.status == JobStatus.COMPLETED for r in (await view.results(ids)).values())
    assert await view.published_counts() == dict.fromkeys(ids, 1)
    await view.close()


async def _at_least(view: RedisView, ids: list[str], n: int) -> bool:
    return await view.num_results(ids) >= n


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def test_backpressure_10000_queued(redis_url, unique_name, engine) -> None:
    cap = 16
    settings = _settings(redis_url, unique_name, max_in_flight=cap)
    jobs = numbered_jobs(10_000, params=ONE_TOKEN, padding_bytes=4096)  # ~42 MB queued
    ids = await _enqueue(settings, jobs)
    del jobs
    view = RedisView(redis_url, unique_name)
    service = _service(settings, engine)
    samples: list[tuple[int, int]] = []  # (pending entries of our consumer, RSS bytes)

    async def sampled() -> bool:
        pending = (await view.pending_by_consumer()).get("w-main", 0)
        samples.append((pending, _rss_bytes()))
        return await view.num_results(ids[:200]) == 200 and len(samples) > 100

    await run_service_until(service, sampled, timeout_s=400)
    assert service.peak_held <= cap
    assert max(pending for pending, _ in samples) <= cap
    rss_after_warmup, rss_end = samples[len(samples) // 4][1], samples[-1][1]
    assert rss_end - rss_after_warmup < 40 * 1024 * 1024, (rss_after_warmup, rss_end)
    length = await view.redis.xlen(view.keys.jobs_stream)
    assert length > 9000  # most of the backlog stayed in Redis, not in the worker
    await view.close()


async def test_two_workers_share_work_and_survive_sigkill(redis_url, unique_name,
                                                          tmp_path) -> None:
    base_env = {"LLM_WORKER_QUEUE": "redis", "LLM_WORKER_REDIS__URL": redis_url,
                "LLM_WORKER_REDIS__PREFIX": unique_name, "LLM_WORKER_CLAIM_IDLE_MS": "1500",
                "LLM_WORKER_MAX_IN_FLIGHT": "8", "LLM_WORKER_SHUTDOWN_GRACE_S": "20"}
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    ids = await _enqueue(_settings(redis_url, unique_name), numbered_jobs(48, params=params))
    view = RedisView(redis_url, unique_name)
    workers = {name: spawn_worker({**base_env, "LLM_WORKER_WORKER_ID": name},
                                  tmp_path / f"{name}.log") for name in ("wa", "wb")}
    try:
        async def both_hold_jobs() -> bool:
            pending = await view.pending_by_consumer()
            return pending.get("wa", 0) > 0 and pending.get("wb", 0) > 0

        await wait_for(both_hold_jobs, 180, "both workers hold jobs")
        workers["wa"].send_signal(signal.SIGKILL)  # dies holding in-flight jobs
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
    assert any(r.worker_id == "wb" and r.attempts > 1 for r in results.values())
    await view.close()


async def test_wrong_password_fails_worker_start_clearly(unique_name, tmp_path) -> None:
    env = {**redis_env(16398, "the-right-one"), "REDIS_DATA_DIR": f"/tmp/{unique_name}"}
    run_script("start_redis.sh", env=env)
    try:
        log_path = tmp_path / "worker.log"
        process = spawn_worker({"LLM_WORKER_QUEUE": "redis",
                                "LLM_WORKER_REDIS__URL": "redis://127.0.0.1:16398/0",
                                "LLM_WORKER_REDIS__PASSWORD": "a-wrong-one"}, log_path)
        assert process.wait(timeout=60) == 2
        assert "rejected the credentials" in log_path.read_text()
    finally:
        run_script("start_redis.sh", "stop", env=env)


async def test_client_cancels_a_running_job(redis_url, unique_name, engine) -> None:
    settings = _settings(redis_url, unique_name)
    long_params = SamplingParams(temperature=0.0, max_tokens=3000, ignore_eos=True)
    [job_id] = await _enqueue(settings, [Job(id="endless", prompt="Tell me", sampling=long_params)])
    service = _service(settings, engine)
    runner = asyncio.create_task(service.run())
    async with RedisProducer(settings.redis) as client:
        assert await client.status(job_id) in (JobStatus.QUEUED, JobStatus.RUNNING)

        async def running() -> bool:
            return await client.status(job_id) == JobStatus.RUNNING

        await wait_for(running, 60, "the job starts")
        await client.cancel(job_id)
        result = await client.wait(job_id, timeout_s=60)
    service.stop()
    await runner
    assert result.status == JobStatus.CANCELLED
    assert len(result.token_ids) < 3000
    assert not engine.has_unfinished_requests()


async def test_sigterm_while_the_model_loads_exits_cleanly_at_once(redis_url, unique_name,
                                                                    tmp_path) -> None:
    """A worker told to stop while it loads its model (minutes for a large one) leaves at once
    with exit code 0 and holds no job."""
    log_path = tmp_path / "worker.log"
    process = spawn_worker({
        "LLM_WORKER_QUEUE": "redis", "LLM_WORKER_REDIS__URL": redis_url,
        "LLM_WORKER_REDIS__PREFIX": unique_name,
        "LLM_WORKER_MODEL": "qwen2-0.5b", "LLM_WORKER_LOAD_FORMAT": "dummy",
    }, log_path)  # fmt: skip
    try:
        async def loading() -> bool:
            return "loading the model" in log_path.read_text()

        await wait_for(loading, 60, "the worker reached model loading")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = log_path.read_text()
    assert "stopped during start-up" in log and "Traceback" not in log
