"""The wire format: response_format and structured_outputs parse strictly, say what is wrong,
round-trip through JSON, and reach the Job from an OpenAI batch line."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from llm_worker.openai_batch import LineError, parse_line
from llm_worker.schemas import Job, JobStatus, Result, SamplingParams
from llm_worker.schemas.structured import (
    ANY_JSON_OBJECT,
    MAX_CHOICES,
    MAX_SCHEMA_CHARS,
    StructuredOutputs,
    constraint_for,
    parsed_output,
    response_format_constraint,
)

PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}


def _error(model: Any, data: Any) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"json": PERSON}, "json"),
        ({"json": json.dumps(PERSON)}, "json"),
        ({"regex": r"\d{3}"}, "regex"),
        ({"choice": ["yes", "no"]}, "choice"),
        ({"grammar": 'root ::= "a"'}, "grammar"),
    ],
)
def test_each_kind_parses_and_round_trips(data: dict[str, Any], kind: str) -> None:
    constraint = StructuredOutputs.model_validate(data)
    assert constraint.kind == kind
    params = SamplingParams(structured_outputs=constraint)
    assert SamplingParams.model_validate_json(params.model_dump_json()) == params
    if kind == "json":
        assert constraint.json_schema == PERSON  # a JSON string becomes the object
        assert json.loads(params.model_dump_json())["structured_outputs"]["json"] == PERSON


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "exactly one of json, regex, choice, grammar; got none"),
        ({"regex": "a", "choice": ["a"]}, "got regex, choice"),
        ({"choice": []}, "choice must list at least one string"),
        ({"choice": ["x"] * (MAX_CHOICES + 1)}, f"over the {MAX_CHOICES} limit"),
        ({"choice": ["a\0b"]}, "must not contain NUL"),
        ({"json": [1, 2]}, "a JSON schema must be a JSON object, got list"),
        ({"json": "[1]"}, "a JSON schema must be a JSON object, got list"),
        ({"json": "{not json"}, "the JSON schema string is not JSON"),
        ({"json": {"enum": ["x" * MAX_SCHEMA_CHARS]}}, f"over the {MAX_SCHEMA_CHARS} limit"),
        ({"regex": ""}, "at least 1 character"),
        ({"grammar": ""}, "at least 1 character"),
        ({"json_schema": PERSON}, "Extra inputs are not permitted"),
        ({"choice": "yes"}, "valid list"),
    ],
)
def test_bad_structured_outputs_say_what_is_wrong(data: dict[str, Any], expected: str) -> None:
    assert expected in _error(StructuredOutputs, data)


def test_response_formats_become_constraints() -> None:
    job = Job.model_validate({"id": "j", "prompt": "x", "response_format": JSON_SCHEMA_FORMAT})
    assert Job.model_validate_json(job.model_dump_json()) == job
    constraint = constraint_for(job.response_format, job.sampling.structured_outputs)
    assert constraint is not None and constraint.json_schema == PERSON
    json_object = Job.model_validate(
        {"id": "j", "prompt": "x", "response_format": {"type": "json_object"}}
    )
    constraint = response_format_constraint(json_object.response_format)
    assert constraint is not None and constraint.json_schema == ANY_JSON_OBJECT
    text = Job.model_validate({"id": "j", "prompt": "x", "response_format": {"type": "text"}})
    assert constraint_for(text.response_format, None) is None
    # text beside structured_outputs is no conflict: text constrains nothing
    regex = {"structured_outputs": {"regex": "a+"}}
    both = Job.model_validate(
        {"id": "j", "prompt": "x", "response_format": {"type": "text"}, "sampling": regex}
    )
    assert constraint_for(both.response_format, both.sampling.structured_outputs) == (
        both.sampling.structured_outputs
    )


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "xml"}, "does not match any of the expected tags"),
        ({"type": "json_schema"}, "response_format.json_schema.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "has space", "schema": PERSON}},
            "json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "p", "schema": "not json"}},
            "the JSON schema string is not JSON",
        ),
        ({"type": "json_object", "schema": PERSON}, "Extra inputs are not permitted"),
    ],
)
def test_bad_response_formats_fail_the_job(response_format: Any, expected: str) -> None:
    assert expected in _error(Job, {"id": "j", "prompt": "x", "response_format": response_format})


def test_a_job_gives_one_constraint_not_two() -> None:
    text = _error(
        Job,
        {
            "id": "j",
            "prompt": "x",
            "response_format": {"type": "json_object"},
            "sampling": {"structured_outputs": {"regex": "a"}},
        },
    )
    assert "set response_format or sampling.structured_outputs, not both" in text


def _batch_line(url: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": "c1", "method": "POST", "url": url, "body": body})


def test_batch_lines_carry_response_format_and_structured_outputs() -> None:
    messages = [{"role": "user", "content": "Who?"}]
    chat = _batch_line(
        "/v1/chat/completions", {"messages": messages, "response_format": JSON_SCHEMA_FORMAT}
    )
    _, job = parse_line(chat, 1)
    constraint = constraint_for(job.response_format, job.sampling.structured_outputs)
    assert constraint is not None and constraint.json_schema == PERSON
    completion = _batch_line(
        "/v1/completions", {"prompt": "Yes or no?", "structured_outputs": {"choice": ["y", "n"]}}
    )
    _, job = parse_line(completion, 2)
    assert job.response_format is None
    assert job.sampling.structured_outputs == StructuredOutputs(choice=["y", "n"])


def test_bad_constraints_in_batch_lines_are_invalid_requests() -> None:
    line = _batch_line("/v1/completions", {"prompt": "x", "structured_outputs": {"choice": []}})
    with pytest.raises(LineError) as info:
        parse_line(line, 3)
    assert info.value.code == "invalid_request"
    assert "body.structured_outputs.choice" in info.value.message
    assert "at least one string" in info.value.message


def test_parsed_output_is_for_json_that_ran_to_its_end() -> None:
    json_constraint = StructuredOutputs.model_validate({"json": PERSON})
    assert parsed_output(json_constraint, '{"name": "Ada"}', "stop") == {"name": "Ada"}
    assert parsed_output(json_constraint, '{"name": "Ad', "length") is None
    assert parsed_output(StructuredOutputs(regex="a+"), "aaa", "stop") is None
    assert parsed_output(None, '{"a": 1}', "stop") is None
    result = Result(
        id="j", status=JobStatus.COMPLETED, text='{"name": "Ada"}', parsed={"name": "Ada"}
    )
    assert Result.model_validate_json(result.model_dump_json()) == result
