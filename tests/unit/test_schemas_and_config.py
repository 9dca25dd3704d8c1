"""Wire types reject bad input with messages that say what and where; config precedence."""

import argparse

import pytest
from pydantic import ValidationError

from llm_worker.config import EngineSettings, add_settings_arguments, settings_from_args
from llm_worker.schemas import Job, JobStatus, Result, SamplingParams


def _error_text(**job: object) -> str:
    with pytest.raises(ValidationError) as info:
        Job.model_validate(job)
    return str(info.value)


def test_job_needs_exactly_one_input() -> None:
    assert "got none" in _error_text(id="a")
    assert "prompt, messages" in _error_text(
        id="a", prompt="x", messages=[{"role": "user", "content": "y"}]
    )
    assert Job(id="a", prompt_token_ids=[1, 2]).prompt_token_ids == [1, 2]


def test_errors_name_the_field() -> None:
    text = _error_text(id="a", prompt="x", sampling={"top_p": 0})
    assert "sampling.top_p" in text
    assert "sampling.colour" in _error_text(id="a", prompt="x", sampling={"colour": 1})
    assert "min_tokens (9) must not exceed max_tokens (4)" in _error_text(
        id="a", prompt="x", sampling={"min_tokens": 9, "max_tokens": 4}
    )
    assert "deadline must carry a timezone" in _error_text(
        id="a", prompt="x", deadline="2030-01-01T00:00:00"
    )
    assert "id" in _error_text(id="has space", prompt="x")


def test_round_trip_and_terminal_states() -> None:
    job = Job(
        id="j-1",
        prompt="hi",
        sampling=SamplingParams(temperature=0, stop=["\n"]),
        metadata={"traceparent": "00-abc-def-01"},
    )
    assert Job.model_validate_json(job.model_dump_json()) == job
    assert job.traceparent == "00-abc-def-01"
    result = Result(id="j-1", status=JobStatus.COMPLETED, text="ok")
    assert Result.model_validate_json(result.model_dump_json()) == result
    assert {s for s in JobStatus if s.is_terminal} == {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.EXPIRED,
        JobStatus.CANCELLED,
    }


def test_flags_override_env_which_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_WORKER_MAX_NUM_SEQS", "7")
    monkeypatch.setenv("LLM_WORKER_BLOCK_SIZE", "32")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, EngineSettings)
    args = parser.parse_args(["--max-num-seqs", "3", "--no-enable-prefix-caching"])
    settings = settings_from_args(EngineSettings, args)
    assert settings.max_num_seqs == 3  # flag beats env
    assert settings.block_size == 32  # env beats default
    assert settings.enable_prefix_caching is False
    assert (
        settings.max_num_batched_tokens
        == EngineSettings.model_fields["max_num_batched_tokens"].default
    )
    with pytest.raises(ValidationError, match="block_size"):
        settings_from_args(EngineSettings, parser.parse_args(["--block-size", "0"]))


def test_speculation_opt_out_reaches_the_job_from_a_batch_line_and_flags_parse() -> None:
    from llm_worker.openai_batch import parse_line

    line = (
        '{"custom_id": "c1", "method": "POST", "url": "/v1/completions", '
        '"body": {"prompt": "hi", "speculative": false}}'
    )
    _, job = parse_line(line, 1)
    assert job.sampling.speculative is False
    assert Job(id="a", prompt="x").sampling.speculative is True
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, EngineSettings)
    args = parser.parse_args(
        ["--speculative-method", "draft", "--speculative-draft-layers", "8",
         "--num-speculative-tokens", "3", "--no-speculative-adaptive"]
    )  # fmt: skip
    settings = settings_from_args(EngineSettings, args)
    assert settings.speculative_method == "draft" and settings.speculative_draft_layers == 8
    assert settings.num_speculative_tokens == 3 and settings.speculative_adaptive is False
