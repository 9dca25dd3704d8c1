"""Structured outputs through `llm-worker run-batch`: OpenAI batch lines with response_format
or structured_outputs come back within their constraint; bad constraints get error lines
naming the problem while every other line completes."""

import json
from pathlib import Path

import pytest

from llm_worker.cli import main
from llm_worker.jobs import JobError, ServedModel, prepare_job
from llm_worker.schemas import ErrorCode, Job
from tests.structured.path_jobs import BAD_CONSTRAINTS, CONTACT, check_text, good_jobs


def _line(custom_id: str, job: Job) -> str:
    body = {"messages": [m.model_dump() for m in job.messages or []],
            **job.sampling.model_dump(exclude_defaults=True)}  # fmt: skip
    if job.response_format is not None:
        body["response_format"] = job.response_format.model_dump(by_alias=True)
    request = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
               "body": body}  # fmt: skip
    return json.dumps(request)


@pytest.mark.slow
def test_constrained_lines_obey_and_bad_ones_fail_alone(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [_line(job.id, job) for job in good_jobs("b")]
    for name, (constraint, _) in BAD_CONSTRAINTS.items():
        body = {"messages": [{"role": "user", "content": "hi"}], "structured_outputs": constraint}
        lines.append(json.dumps({"custom_id": name, "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}))  # fmt: skip
    empty = {"messages": [{"role": "user", "content": "hi"}], "structured_outputs": {"choice": []}}
    lines.append(json.dumps({"custom_id": "empty-choice", "method": "POST",
                             "url": "/v1/chat/completions", "body": empty}))  # fmt: skip
    src.write_text("\n".join(lines) + "\n")
    assert main(["run-batch", "-i", str(src), "-o", str(dst), "--no-progress"]) == 0
    out = {o["custom_id"]: o for o in map(json.loads, dst.read_text().splitlines())}
    for name, (_, problem) in BAD_CONSTRAINTS.items():
        assert out[name]["error"]["code"] == ErrorCode.INVALID
        assert out[name]["error"]["message"].startswith(problem), out[name]["error"]
    assert out["empty-choice"]["error"]["code"] == ErrorCode.INVALID
    assert "choice" in out["empty-choice"]["error"]["message"]
    for job in good_jobs("b"):
        record = out[job.id]
        assert record["error"] is None, record["error"]
        choice = record["response"]["body"]["choices"][0]
        check_text(job.id.removeprefix("b-"), choice["message"]["content"], choice["finish_reason"])
    schema_choice = out["b-schema"]["response"]["body"]["choices"][0]
    assert schema_choice["finish_reason"] == "stop"
    assert set(json.loads(schema_choice["message"]["content"])) == set(CONTACT["properties"])


def test_a_constrained_job_on_a_model_without_a_tokenizer_is_invalid() -> None:
    served = ServedModel("m", tokenizer=None, vocab_size=100)
    for job in good_jobs("t")[:4]:
        job = job.model_copy(update={"messages": None, "prompt_token_ids": [5, 6]})
        with pytest.raises(JobError) as refused:
            prepare_job(job, served)
        assert refused.value.code == ErrorCode.INVALID and "tokenizer" in refused.value.message
    free = good_jobs("t")[4].model_copy(update={"messages": None, "prompt_token_ids": [5, 6]})
    assert prepare_job(free, served)[0] == [5, 6]
