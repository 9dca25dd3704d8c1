"""Job sets and checks shared by the service tests."""

import json

from llm_worker.config import EngineSettings
from llm_worker.schemas import ErrorCode, Job, JobStatus, Result, SamplingParams

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


def _killer(job_id: str, **fields: object) -> bytes:
    return json.dumps({"id": job_id, "prompt": "word " * 20, **fields}).encode()


# The messages that killed workers (issue 25) and the one that lost its batch, by job id; each
# must become a failed result under its id while the jobs beside it complete.
KILLERS: dict[str, tuple[bytes, str]] = {
    "seed": (_killer("seed", sampling={"temperature": 0.7, "seed": 2**64}), ErrorCode.INVALID),
    "top-k": (_killer("top-k", sampling={"temperature": 0.7, "top_k": 2**63}),
              ErrorCode.INVALID),
    "stop-ids": (_killer("stop-ids", sampling={"stop_token_ids": [1_000_000], "min_tokens": 2}),
                 ErrorCode.INVALID),
    "salt": (_killer("salt", cache_salt="\ud800"), ErrorCode.INVALID),
    "nested": (b'{"id": "nested", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
               ErrorCode.MALFORMED),
}


def other_content(job: Job) -> bytes:
    """A message reusing `job`'s id for other content: it must publish nothing."""
    return job.model_copy(update={"prompt": f"{job.prompt} (changed)"}).model_dump_json().encode()
