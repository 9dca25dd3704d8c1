"""Job sets and checks shared by the service tests."""

from llm_worker.config import EngineSettings
from llm_worker.schemas import Job, JobStatus, Result, SamplingParams

# Small enough for 2 CPU cores, large enough that batches really mix jobs.
TEST_ENGINE_SETTINGS = EngineSettings(max_num_seqs=32, kv_cache_memory_gb=0.5)

GREEDY_SHORT = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
# The 200-job runs: one token each keeps them to one prefill per job on 2 CPU cores.
ONE_TOKEN = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


def numbered_jobs(n: int, stem: str = "job", params: SamplingParams = GREEDY_SHORT,
                  padding_bytes: int = 0) -> list[Job]:
    """Distinct short prompts; `padding_bytes` of metadata make messages heavy, not prompts."""
    metadata = {"padding": "x" * padding_bytes} if padding_bytes else {}
    return [
        Job(id=f"{stem}-{i}", prompt=f"Item {i}: the number after {i} is", sampling=params,
            metadata=metadata)
        for i in range(n)
    ]


def assert_matches_generate(engine, jobs: list[Job], results: dict[str, Result]) -> None:
    """Every job completed with exactly the tokens the engine's own generate() gives."""
    assert sorted(results) == sorted(job.id for job in jobs)
    expected = engine.generate([job.prompt for job in jobs], [job.sampling for job in jobs])
    for job, direct in zip(jobs, expected, strict=True):
        got = results[job.id]
        assert got.status == JobStatus.COMPLETED, got
        assert got.token_ids == direct.output_token_ids, job.id
        assert got.text == direct.text


def assert_match_expected(jobs: list[Job], results: dict[str, Result],
                          expected: dict[str, list[int]]) -> None:
    assert sorted(results) == sorted(job.id for job in jobs)
    for job in jobs:
        assert results[job.id].status == JobStatus.COMPLETED, results[job.id]
        assert results[job.id].token_ids == expected[job.prompt], job.id
