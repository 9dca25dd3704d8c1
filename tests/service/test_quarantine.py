"""Poison quarantine, engine-reported failures and the default seed, on the in-process broker
with a real tiny engine and one injected fault."""

import pytest

from llm_worker.jobs import ServedModel, default_seed, prepare_job
from llm_worker.queues.memory import MemoryBroker
from llm_worker.schemas import ErrorCode, Job, JobStatus, SamplingParams
from llm_worker.service_settings import ServiceSettings
from tests.service.faults import DiesOn, FailsRequest, serve_until_settled, tiny_engine

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

TINY_VOCAB = 512  # tiny-llama's
PARAMS = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


def _settings(**overrides: object) -> ServiceSettings:
    return ServiceSettings(queue="memory", worker_id="w", poll_timeout_s=0.02,
                           watch_interval_s=0.05, shutdown_grace_s=2.0, **overrides)


def _jobs(n: int) -> list[Job]:
    return [Job(id=f"job-{i}", prompt_token_ids=[10 + i, 20, 30], sampling=PARAMS)
            for i in range(n)]


def _put(broker: MemoryBroker, jobs: list[Job]) -> None:
    for job in jobs:
        broker.put(job.model_dump_json().encode(), key=job.id)


async def test_a_job_that_kills_its_worker_is_dead_lettered_alone() -> None:
    jobs = _jobs(6)
    poison = jobs[3].id
    broker = MemoryBroker()
    _put(broker, jobs)
    deaths = await serve_until_settled(
        broker, lambda: DiesOn(tiny_engine(), poison), _settings(max_solo_deaths=3), len(jobs))
    # It died beside the other five, again beside them (the suspects run together once), then
    # three times alone; never again after that.
    assert deaths == 5
    [(dead, reason)] = broker.dead_letters
    assert dead.key == poison and reason.startswith(ErrorCode.POISON)
    assert "died 5 times" in reason and "3 of them with no other job" in reason
    assert "illegal memory access" in reason  # the last error, recorded as the engine died
    assert broker.results[poison].error.code == ErrorCode.POISON
    survivors = [job.id for job in jobs if job.id != poison]
    assert all(broker.results[i].status == JobStatus.COMPLETED for i in survivors)
    assert sorted(broker.acked) == list(range(len(jobs)))  # each message settled once


async def test_an_engine_reported_failure_fails_that_job_only() -> None:
    jobs = _jobs(5)
    broker = MemoryBroker()
    _put(broker, jobs)
    deaths = await serve_until_settled(
        broker, lambda: FailsRequest(tiny_engine(), "job-2"), _settings(), len(jobs))
    assert deaths == 0 and not broker.dead_letters
    failed = broker.results["job-2"]
    assert failed.status == JobStatus.FAILED and failed.error.code == ErrorCode.INTERNAL
    assert all(broker.results[j.id].status == JobStatus.COMPLETED for j in jobs if j.id != "job-2")


def test_an_unseeded_sampled_job_draws_the_same_tokens_when_it_runs_again() -> None:
    job = Job(id="sampled-7", prompt_token_ids=[5, 9, 14, 200],
              sampling=SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True))
    served = ServedModel("tiny-llama", None, TINY_VOCAB)
    prompt_ids, params = prepare_job(job, served)
    assert params.seed == default_seed(job.id)
    # It runs again, with other jobs beside it this time: the same tokens.
    engine = tiny_engine()
    first = engine.generate([prompt_ids], params)[0].output_token_ids
    crowded = engine.generate([[7, 8], prompt_ids, [300, 301]], params)
    assert crowded[1].output_token_ids == first
    other_ids, other_params = prepare_job(job.model_copy(update={"id": "sampled-8"}), served)
    assert engine.generate([other_ids], other_params)[0].output_token_ids != first
