"""Hypothesis against a live worker (the dummy tiny Llama on the CPU): whatever the messages,
each ends in exactly one terminal record, the valid jobs among them complete, and the worker
keeps serving."""

import asyncio
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_worker.intake import usable_job_id
from llm_worker.queues.memory import MemoryBroker
from llm_worker.schemas import Job, JobStatus, SamplingParams
from llm_worker.service_settings import ServiceSettings
from tests.fuzz_messages import MESSAGES
from tests.service.faults import serve_until_settled, tiny_engine

pytestmark = [pytest.mark.timeout(600)]

_VALID = st.builds(
    lambda n, tokens, temperature: Job(
        id=f"valid-{n}", prompt_token_ids=tokens,
        sampling=SamplingParams(temperature=temperature, max_tokens=3, ignore_eos=True)),
    st.integers(0, 10**6), st.lists(st.integers(5, 500), min_size=1, max_size=12),
    st.sampled_from([0.0, 0.9]))


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(MESSAGES, min_size=1, max_size=25), st.lists(_VALID, max_size=6,
                                                             unique_by=lambda job: job.id))
def test_every_message_ends_in_exactly_one_terminal_record(hostile: list[bytes],
                                                           valid: list[Job]) -> None:
    broker = MemoryBroker()
    for i, payload in enumerate(hostile):
        broker.put(payload, key=f"hostile-{i}" if i % 2 else None)
    for job in valid:
        broker.put(job.model_dump_json().encode(), key=job.id)
    total = len(hostile) + len(valid)
    settings_ = ServiceSettings(queue="memory", worker_id="w", poll_timeout_s=0.02,
                                watch_interval_s=0.05, shutdown_grace_s=2.0)
    deaths = asyncio.run(serve_until_settled(broker, tiny_engine, settings_, total, max_lives=1))
    assert deaths == 0
    assert Counter(broker.acked) == Counter(range(total))  # each message settled once
    dead = {int(delivery.handle) for delivery, _ in broker.dead_letters}
    assert len(dead) == len(broker.dead_letters)
    for handle, payload in enumerate([*hostile, *(j.model_dump_json().encode() for j in valid)]):
        # not dead-lettered: a result under its id says how it ended (its own, or that of
        # the earlier message with the same content it was a copy of)
        assert handle in dead or _named_id(payload, handle, len(hostile)) in broker.results
    assert all(broker.results[job.id].status == JobStatus.COMPLETED for job in valid)


def _named_id(payload: bytes, handle: int, num_hostile: int) -> str | None:
    if handle < num_hostile and handle % 2:  # a keyed hostile message: the key is its id
        return f"hostile-{handle}"
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return usable_job_id(data.get("id")) if isinstance(data, dict) else None
