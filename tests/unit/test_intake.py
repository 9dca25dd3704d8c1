"""The intake is total: whatever the bytes, a delivery becomes a Job or a refusal with a reason,
never an exception; the known killer and lax-coercion messages are refused by name."""

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_worker.intake import IntakeLimits, Parsed, Refusal, nesting_depth, parse_delivery
from llm_worker.queues.protocol import Delivery
from llm_worker.schemas import ErrorCode, job_digest, payload_digest
from llm_worker.schemas.text import INT32_MAX, SEED_MAX
from tests.fuzz_messages import JOB_SHAPED, JSON, job_shaped_bytes

LIMITS = IntakeLimits(max_job_bytes=64 * 1024, max_json_depth=32)


def _parse(payload: bytes, key: str | None = None) -> Parsed | Refusal:
    return parse_delivery(Delivery(payload, key, 1, 0, "test/0"), LIMITS)


def _refused(payload: bytes) -> Refusal:
    parsed = _parse(payload)
    assert isinstance(parsed, Refusal), parsed
    return parsed


def _job(**fields: Any) -> bytes:
    return json.dumps({"id": "j-1", "prompt": "hello", **fields}).encode()


def _assert_total(parsed: Parsed | Refusal, payload: bytes) -> None:
    """What any payload must come to: a job with its digest, or a reason that UTF-8 carries,
    with the raw bytes' digest so the same message is recognised again."""
    if isinstance(parsed, Parsed):
        assert parsed.digest == job_digest(parsed.job)
        return
    assert parsed.digest == payload_digest(payload)
    parsed.reason.encode("utf-8")  # a reason quoting hostile input still encodes
    assert parsed.code in vars(ErrorCode).values()


@pytest.mark.parametrize(("payload", "reason"), [
    (_job(sampling={"temperature": 0.7, "seed": 18446744073709551616}), "sampling.seed"),
    (_job(sampling={"temperature": 0.7, "top_k": 9223372036854775808}), "sampling.top_k"),
    (_job(cache_salt="\ud800"), "cache_salt: not valid Unicode text"),
    (_job(prompt="a\udfffb"), "prompt: not valid Unicode text"),
    (_job(metadata={"k": "\ud83d"}), "metadata.k: not valid Unicode text"),
    (_job(sampling={"stop": ["\ud800"]}), "sampling.stop.0: not valid Unicode text"),
    (b"[" * 30_000 + b"]" * 30_000, "nested 30000 levels deep"),
    (_job(sampling={"max_tokens": True}), "sampling.max_tokens: Input should be a valid integer"),
    (json.dumps({"id": "j", "prompt_token_ids": [1000.0]}).encode(),
     "prompt_token_ids.0: Input should be a valid integer"),
    (_job(deadline=12), "deadline: must be an ISO 8601 timestamp string, got int"),
    (_job(deadline="12"), "deadline: '12' is not an ISO 8601 timestamp"),
    (_job().decode().encode("utf-16"), "UTF-16 LE byte-order mark"),
    (b"\xef\xbb\xbf" + _job(), "UTF-8 byte-order mark"),
    (b'{"id": "j", "prompt": "x", "id": "k"}', "key 'id' appears twice"),
    (_job(sampling={"temperature": float("nan")}), "NaN is not a JSON number"),
    (b'{"id": "j", "prompt": "x", "priority": 1' + b"0" * 5000 + b"}", "not JSON"),
    (b'{"id": "j", "prompt": "x", "sampling": {"temperature": 1e400}}',
     "sampling.temperature: Input should be a finite number"),
])
def test_killers_and_lax_coercion_are_refused_with_the_reason(payload: bytes, reason: str) -> None:
    refusal = _refused(payload)
    assert reason in refusal.message
    _assert_total(refusal, payload)


def test_bounds_the_engine_needs_are_inclusive() -> None:
    parsed = _parse(_job(sampling={"temperature": 0.5, "seed": SEED_MAX, "top_k": INT32_MAX}))
    assert isinstance(parsed, Parsed)
    assert (parsed.job.sampling.seed, parsed.job.sampling.top_k) == (SEED_MAX, INT32_MAX)


def test_a_key_that_is_not_the_job_id_publishes_under_neither() -> None:
    refusal = parse_delivery(Delivery(_job(), "other-id", 1, 0, "test/0"), LIMITS)
    assert isinstance(refusal, Refusal) and refusal.job_id is None
    assert "is not the job's id" in refusal.message


def test_a_schema_refusal_keeps_the_payload_id_for_its_failed_result() -> None:
    refusal = _refused(_job(sampling={"top_p": 0}))
    assert refusal.job_id == "j-1" and refusal.code == ErrorCode.INVALID


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@given(JSON)
def test_nesting_depth_matches_the_parsed_structure(value: object) -> None:
    assert nesting_depth(json.dumps(value)) == _depth(value)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.none() | st.text(max_size=40))
def test_arbitrary_bytes_never_raise(payload: bytes, key: str | None) -> None:
    _assert_total(_parse(payload, key), payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_arbitrary_json_never_raises(value: object) -> None:
    payload = json.dumps(value).encode()
    _assert_total(_parse(payload), payload)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(JOB_SHAPED)
def test_schema_shaped_jobs_with_extreme_values_never_raise(fields: dict[str, Any]) -> None:
    payload = job_shaped_bytes(fields)
    parsed = _parse(payload)
    _assert_total(parsed, payload)
    if isinstance(parsed, Parsed):  # everything the engine reads is in its bounds
        sampling = parsed.job.sampling
        assert 0 <= (sampling.seed or 0) <= SEED_MAX
        assert -1 <= sampling.top_k <= INT32_MAX and sampling.max_tokens <= INT32_MAX
        parsed.job.model_dump_json().encode("utf-8")
