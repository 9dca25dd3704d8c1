"""Results read back from a broker: the fields a newer version added are dropped at any depth
(a rolling upgrade's newer workers' results still read as terminal), everything else is
validated as strictly as a result this version builds."""

import json

import pytest

from llm_worker.schemas import JobStatus, Result, TokenLogprob, Usage
from llm_worker.schemas.stored_result import read_result

RESULT = Result(id="a", status=JobStatus.COMPLETED, text="hi", usage=Usage(prompt_tokens=3),
                logprobs=[TokenLogprob(token_id=5, logprob=-0.5)])  # fmt: skip


def _newer() -> dict:
    data = RESULT.model_dump(mode="json")
    data["reasoning"] = {"summary": "added later"}
    data["usage"]["reasoning_tokens"] = 7
    data["logprobs"][0]["bytes"] = [104, 105]
    return data


def test_a_newer_versions_fields_are_dropped_at_any_depth() -> None:
    newer = _newer()
    with pytest.raises(ValueError, match="Extra inputs"):
        Result.model_validate(newer)
    assert read_result(newer) == RESULT
    assert read_result(json.dumps(newer).encode()) == RESULT
    assert read_result(json.dumps(newer)) == RESULT
    assert newer["usage"]["reasoning_tokens"] == 7  # the caller's value is left as it was


@pytest.mark.parametrize("change", [
    lambda d: d.update(status="done"),  # a value this version does not know is no field
    lambda d: d["usage"].update(prompt_tokens="3 tokens"),
    lambda d: d.pop("id"),
])
def test_everything_else_is_refused_as_before(change) -> None:
    newer = _newer()
    change(newer)
    with pytest.raises(ValueError):
        read_result(newer)


@pytest.mark.parametrize("raw", [b"{not json", b"\xff", b"[1]", b"null"])
def test_bytes_that_are_no_result_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        read_result(raw)
