"""One canonical digest of a job's content: the same for the same request however it is
written, different for any change that could change its output."""

import json

from hypothesis import given
from hypothesis import strategies as st

from llm_worker.schemas import Job, SamplingParams, content_job_id, job_digest

_SAMPLING = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, 0.7, 1.0]),
    top_k=st.sampled_from([-1, 5]),
    max_tokens=st.integers(1, 64),
    seed=st.none() | st.integers(0, 2**64 - 1),
    stop=st.lists(st.text(min_size=1, max_size=5).filter(lambda s: s.isascii()), max_size=2),
)
_JOBS = st.builds(Job, id=st.just("j"), prompt=st.text(min_size=1, max_size=20), sampling=_SAMPLING)


@given(_JOBS, st.integers(-5, 5), st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
def test_scheduling_and_tracing_fields_are_not_content(job: Job, priority: int,
                                                       metadata: dict[str, str]) -> None:
    again = job.model_copy(update={"id": "other", "priority": priority, "metadata": metadata,
                                   "deadline": None})
    assert job_digest(again) == job_digest(job)


@given(_JOBS)
def test_defaults_sent_explicitly_or_omitted_are_the_same_content(job: Job) -> None:
    full = Job.model_validate_json(json.dumps(job.model_dump(mode="json")))
    sparse = Job.model_validate_json(job.model_dump_json(exclude_defaults=True))
    assert job_digest(full) == job_digest(sparse) == job_digest(job)


@given(_JOBS, _JOBS)
def test_different_content_has_a_different_digest(a: Job, b: Job) -> None:
    same = a.model_dump(exclude={"id"}) == b.model_dump(exclude={"id"})
    assert (job_digest(a) == job_digest(b)) == same


def test_a_derived_id_follows_the_content() -> None:
    job = Job(id="x", prompt="The capital of France is")
    changed = job.model_copy(update={"prompt": "The capital of Spain is"})
    assert content_job_id("3-req", job) == content_job_id("3-req", job.model_copy())
    assert content_job_id("3-req", job) != content_job_id("3-req", changed)
    Job(id=content_job_id("3-req", job), prompt="valid as an id")
