"""The service over the in-process broker with the real bundled engine: outputs, poison,
deadlines, cancellation, priority, idempotency, graceful shutdown."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from llm_worker.queues.memory import MemoryBroker, MemoryResultSink
from llm_worker.schemas import ErrorCode, Job, JobStatus, Result, SamplingParams
from llm_worker.service import Service
from llm_worker.service_settings import ServiceSettings
from tests.service.jobs import GREEDY_SHORT, assert_matches_generate, numbered_jobs

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


def _service(engine, broker: MemoryBroker, **overrides) -> Service:
    settings = ServiceSettings(queue="memory", worker_id="w1", poll_timeout_s=0.05,
                               watch_interval_s=0.05, **overrides)
    return Service(settings, broker.source(), broker.sink(), engine, served_model="smollm2")


async def _run_until(service: Service, done, timeout_s: float = 120.0) -> None:
    runner = asyncio.create_task(service.run())
    async with asyncio.timeout(timeout_s):
        while not done():
            await asyncio.sleep(0.02)
    service.stop()
    await runner


def _put(broker: MemoryBroker, jobs: list[Job]) -> None:
    for job in jobs:
        broker.put(job.model_dump_json().encode(), key=job.id)


async def _finish_then_cancel(engine, jobs: list[Job], endless: Job) -> MemoryBroker:
    """Serve `jobs` and `endless`; once every job has a result, cancel `endless` (still
    running) and stop when its result is in."""
    broker = MemoryBroker()
    _put(broker, [*jobs, endless])
    service = _service(engine, broker)
    runner = asyncio.create_task(service.run())
    async with asyncio.timeout(240):
        while len(broker.results) < len(jobs):
            await asyncio.sleep(0.02)
        broker.cancel_requests.add(endless.id)
        while endless.id not in broker.results:
            await asyncio.sleep(0.02)
    service.stop()
    await runner
    return broker


async def test_outputs_equal_direct_generate_and_cap_holds(engine) -> None:
    broker = MemoryBroker()
    jobs = numbered_jobs(40)
    _put(broker, jobs)
    service = _service(engine, broker, max_in_flight=8)
    await _run_until(service, lambda: len(broker.results) == 40)
    assert service.peak_held <= 8
    assert not broker.unacked and not broker.queued
    assert_matches_generate(engine, jobs, broker.results)


async def test_poison_messages_fail_and_good_jobs_still_run(engine) -> None:
    broker = MemoryBroker()
    too_long = "word " * 9000  # over max_model_len 8192 tokens
    broker.put(b"\x00\xffnot json", key="bad-bytes")
    broker.put(b"[1, 2]", key=None)
    broker.put(b'{"id": "bad-schema", "prompt": "x", "sampling": {"top_p": 3}}', key=None)
    broker.put(Job(id="long", prompt=too_long, sampling=GREEDY_SHORT).model_dump_json().encode())
    broker.put(Job(id="who", prompt="x", model="gpt-9").model_dump_json().encode())
    broker.put(b'{"id": "huge", "prompt": "' + b"y" * 70_000 + b'"}', key="huge")
    good = numbered_jobs(3, "good")
    _put(broker, good)
    service = _service(engine, broker, max_job_bytes=64 * 1024)
    await _run_until(service, lambda: len(broker.results) == 8)
    codes = {job_id: r.error.code for job_id, r in broker.results.items() if r.error}
    assert codes == {
        "bad-bytes": ErrorCode.MALFORMED, "bad-schema": ErrorCode.INVALID,
        "long": ErrorCode.PROMPT_TOO_LONG, "who": ErrorCode.UNKNOWN_MODEL,
        "huge": ErrorCode.TOO_LARGE,
    }
    [(_, reason)] = broker.dead_letters  # the one with no job id to answer under
    assert reason.startswith(ErrorCode.MALFORMED)
    assert all(broker.results[j.id].status == JobStatus.COMPLETED for j in good)


async def test_deadline_and_cancellation(engine) -> None:
    broker = MemoryBroker()
    past = datetime.now(UTC) - timedelta(seconds=1)
    long_params = SamplingParams(temperature=0.0, max_tokens=2000, ignore_eos=True)
    _put(broker, [
        Job(id="late", prompt="x", deadline=past),
        Job(id="soon", prompt="x", sampling=long_params,
            deadline=datetime.now(UTC) + timedelta(seconds=2)),
        Job(id="stop-me", prompt="x", sampling=long_params),
    ])
    service = _service(engine, broker)

    async def cancel_when_running() -> None:
        while broker.statuses.get("stop-me") != JobStatus.RUNNING:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        broker.cancel_requests.add("stop-me")

    canceller = asyncio.create_task(cancel_when_running())
    await _run_until(service, lambda: len(broker.results) == 3)
    await canceller
    late, soon, stopped = (broker.results[i] for i in ("late", "soon", "stop-me"))
    assert late.status == JobStatus.EXPIRED and late.token_ids == []
    assert soon.status == JobStatus.EXPIRED
    assert stopped.status == JobStatus.CANCELLED
    assert 0 < len(stopped.token_ids) < 2000
    assert not engine.has_unfinished_requests()  # aborted jobs gave their blocks back


async def test_redelivered_finished_job_is_acked_without_rerun(engine) -> None:
    broker = MemoryBroker()
    [job] = numbered_jobs(1)
    _put(broker, [job, job])  # a producer retry: same id twice
    service = _service(engine, broker)
    await _run_until(service, lambda: not broker.queued and not broker.unacked and broker.results)
    assert list(broker.results) == [job.id]
    assert broker.results[job.id].attempts == 1


class _RecordingEngine:
    """The real engine, with the order requests reached it written down."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.added: list[str] = []

    def add_request(self, request_id: str, *args, **kwargs) -> None:
        self.added.append(request_id)
        self._engine.add_request(request_id, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


async def test_higher_priority_is_admitted_first(engine) -> None:
    broker = MemoryBroker()
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    _put(broker, [Job(id=f"p{p}", prompt="Hello", sampling=params, priority=p)
                  for p in (0, 5, 1, 9)])
    recording = _RecordingEngine(engine)
    service = _service(recording, broker, max_in_flight=4)
    await _run_until(service, lambda: len(broker.results) == 4)
    assert recording.added == ["p9", "p5", "p1", "p0"]


async def test_shutdown_hands_back_unfinished_jobs(engine) -> None:
    broker = MemoryBroker()
    long_params = SamplingParams(temperature=0.0, max_tokens=4000, ignore_eos=True)
    _put(broker, [Job(id=f"long-{i}", prompt="x", sampling=long_params) for i in range(3)])
    service = _service(engine, broker, shutdown_grace_s=0.5)
    await _run_until(service, lambda: broker.statuses.get("long-0") == JobStatus.RUNNING)
    assert not broker.results
    assert sorted(d.key for d in broker.queued) == ["long-0", "long-1", "long-2"]
    assert all(d.delivery_count == 2 for d in broker.queued)
    assert not engine.has_unfinished_requests()


async def test_job_over_max_deliveries_is_dead_lettered(engine) -> None:
    broker = MemoryBroker()
    [job] = numbered_jobs(1, "crasher")
    _put(broker, [job])
    crashed = broker.source()
    await crashed.receive(1, 0.01)
    await crashed.close()  # a worker died holding it: delivered again with count 2
    service = _service(engine, broker, max_deliveries=1)
    await _run_until(service, lambda: job.id in broker.results)
    assert broker.results[job.id].error.code == ErrorCode.POISON
    [(delivery, reason)] = broker.dead_letters
    assert delivery.key == job.id and "delivered 2 times" in reason


class _RefusesOneResult(MemoryResultSink):
    """The in-process sink, refusing (for good, not transiently) the result of one job id, as a
    broker refuses a record over its size limit."""

    def __init__(self, broker: MemoryBroker, refused_id: str) -> None:
        super().__init__(broker)
        self.refused_id = refused_id
        self.batch_sizes: list[int] = []

    async def publish(self, result: Result) -> bool:
        if result.id == self.refused_id and result.status == JobStatus.COMPLETED:
            raise ValueError("record too large")
        return await super().publish(result)

    async def publish_many(self, results) -> None:
        self.batch_sizes.append(len(results))
        if any(r.id == self.refused_id and r.status == JobStatus.COMPLETED for r in results):
            raise ValueError("record too large")
        await super().publish_many(results)


async def test_results_settle_in_batches_and_a_refused_one_is_isolated(engine) -> None:
    broker = MemoryBroker()
    jobs = numbered_jobs(24)
    _put(broker, jobs)
    sink = _RefusesOneResult(broker, refused_id="job-5")
    settings = ServiceSettings(queue="memory", worker_id="w1", poll_timeout_s=0.05,
                               watch_interval_s=0.05)  # fmt: skip
    service = Service(settings, broker.source(), sink, engine, served_model="smollm2")
    await _run_until(service, lambda: len(broker.results) == 24)
    assert max(sink.batch_sizes) > 1  # jobs finishing in one step were published together
    refused = broker.results["job-5"]
    assert refused.status == JobStatus.FAILED and refused.error is not None
    assert refused.error.code == ErrorCode.INTERNAL
    assert "could not be published" in refused.error.message
    good = [j for j in jobs if j.id != "job-5"]
    assert_matches_generate(engine, good, {j.id: broker.results[j.id] for j in good})
    assert not broker.unacked and not broker.queued


async def test_a_speculating_worker_serves_the_same_tokens_and_cancels_cleanly(engine) -> None:
    """Jobs through the service on an n-gram speculating engine: the tokens of the plain
    engine, an opted-out job among them, and a cancel mid-run that frees its blocks."""
    from llm_worker.engine.llm_engine import LLMEngine
    from tests.service.jobs import TEST_ENGINE_SETTINGS

    spec_engine = LLMEngine.from_settings(TEST_ENGINE_SETTINGS.model_copy(update={
        "speculative_method": "ngram", "speculative_adaptive": False}))  # fmt: skip
    repeat = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    jobs = [Job(id=f"copy-{i}", prompt=f"Say 'red green blue {i}' three times: red green blue "
                f"{i}, red green blue {i},", sampling=repeat) for i in range(6)]  # fmt: skip
    jobs.append(Job(id="no-spec", prompt=jobs[0].prompt,
                    sampling=repeat.model_copy(update={"speculative": False})))  # fmt: skip
    endless = Job(id="endless", prompt="Count: 1, 2, 3,",
                  sampling=SamplingParams(temperature=0.0, max_tokens=3000, ignore_eos=True))
    broker = await _finish_then_cancel(spec_engine, jobs, endless)
    assert broker.results["endless"].status == JobStatus.CANCELLED
    assert_matches_generate(engine, jobs, {j.id: broker.results[j.id] for j in jobs})
    stats = spec_engine.stats()
    assert stats.spec is not None and stats.spec.num_accepted_tokens > 0
    spec_engine.block_manager.check_invariants([])
    assert spec_engine.block_manager.num_free_blocks == spec_engine.block_manager.num_blocks


async def test_an_async_scheduling_worker_serves_the_same_tokens_and_cancels_cleanly(
    engine,
) -> None:
    """The service over an engine that queues each step before reading the last one's tokens
    (the CUDA default, forced on here): the synchronous engine's tokens and texts, stop strings
    and max_tokens included, and a cancel while a step is in flight leaves no placeholder."""
    from llm_worker.engine.llm_engine import PLACEHOLDER, LLMEngine
    from tests.service.jobs import TEST_ENGINE_SETTINGS

    async_engine = LLMEngine.from_settings(
        TEST_ENGINE_SETTINGS.model_copy(update={"async_scheduling": True})
    )
    assert async_engine.async_scheduling and not engine.async_scheduling
    jobs = [
        Job(id=f"j{i}", prompt=f"List three colours, then the number {i}:",
            sampling=SamplingParams(temperature=0.0, max_tokens=4 + 3 * i,
                                    stop=[","] if i % 2 else []))
        for i in range(8)
    ]  # fmt: skip
    endless = Job(id="endless", prompt="Count: 1, 2, 3,",
                  sampling=SamplingParams(temperature=0.0, max_tokens=3000, ignore_eos=True))
    broker = await _finish_then_cancel(async_engine, jobs, endless)
    cancelled = broker.results["endless"]
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.token_ids and PLACEHOLDER not in cancelled.token_ids
    assert_matches_generate(engine, jobs, {j.id: broker.results[j.id] for j in jobs})
    assert any(broker.results[j.id].finish_reason == "stop" for j in jobs)
    async_engine.block_manager.check_invariants([])
    assert async_engine.block_manager.num_free_blocks == async_engine.block_manager.num_blocks
