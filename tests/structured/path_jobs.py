"""A few constrained jobs, and bad ones, that every path (run-batch, Redis, Kafka) runs: each
good job's output obeys its constraint; each bad one fails alone with invalid_request."""

import json
import re
from typing import Any

import jsonschema

from llm_worker.schemas import ErrorCode, Job, JobStatus, Result

CONTACT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "email": {"type": "string", "format": "email"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "email", "age"],
}
REGEX = r"[A-Z]{2}-\d{3}"
CHOICES = ["positive", "negative", "neutral"]


def _job(job_id: str, text: str, **fields: Any) -> Job:
    sampling = {"temperature": 0.0, "max_tokens": 96, **fields.pop("sampling", {})}
    return Job.model_validate({"id": job_id, "messages": [{"role": "user", "content": text}],
                               "sampling": sampling, **fields})  # fmt: skip


def good_jobs(prefix: str) -> list[Job]:
    schema_format = {"type": "json_schema", "json_schema": {"name": "contact", "schema": CONTACT}}
    return [
        _job(f"{prefix}-schema", "Write a contact card as JSON.", response_format=schema_format),
        _job(f"{prefix}-object", "Describe a cat as a JSON object.",
             response_format={"type": "json_object"}, sampling={"max_tokens": 160}),
        _job(f"{prefix}-regex", "A product code:",
             sampling={"structured_outputs": {"regex": REGEX}}),
        _job(f"{prefix}-choice", "I love this film! Sentiment:",
             sampling={"structured_outputs": {"choice": CHOICES}}),
        _job(f"{prefix}-free", "Say hi.", sampling={"max_tokens": 4}),
    ]  # fmt: skip


# Constraints that pass the wire checks and fail in the grammar backend, with the problem named.
BAD_CONSTRAINTS = {
    "bad-schema": ({"json": {"type": "nonsense"}}, "invalid JSON schema"),
    "unsupported": ({"json": {"type": "array", "uniqueItems": True}},
                    "unsupported JSON schema feature"),
    "bad-regex": ({"regex": "(ab"}, "invalid regex"),
    "bad-grammar": ({"grammar": "root ::= ("}, "invalid grammar"),
}  # fmt: skip


def bad_jobs(prefix: str) -> list[Job]:
    return [_job(f"{prefix}-{name}", "hi", sampling={"structured_outputs": constraint})
            for name, (constraint, _) in BAD_CONSTRAINTS.items()]  # fmt: skip


def check_results(prefix: str, results: dict[str, Result]) -> None:
    """Every good job completed within its constraint (JSON ones with `parsed` when they
    stopped); every bad job failed with invalid_request naming its problem."""
    for name, (_, problem) in BAD_CONSTRAINTS.items():
        result = results[f"{prefix}-{name}"]
        assert result.status == JobStatus.FAILED and result.error is not None
        assert result.error.code == ErrorCode.INVALID, result.error
        assert result.error.message.startswith(problem), result.error.message
    for job in good_jobs(prefix):
        result = results[job.id]
        assert result.status == JobStatus.COMPLETED, result.error
        check_text(job.id.removeprefix(f"{prefix}-"), result.text or "", result.finish_reason)
        if job.response_format is not None and result.finish_reason == "stop":
            assert result.parsed == json.loads(result.text or "")
        else:
            assert result.parsed is None
    assert results[f"{prefix}-schema"].finish_reason == "stop"


def check_text(kind: str, text: str, finish_reason: str | None) -> None:
    """`kind`: a good job's name without its prefix."""
    if finish_reason != "stop" or kind == "free":
        return
    if kind == "schema":
        jsonschema.validate(json.loads(text), CONTACT, format_checker=jsonschema.FormatChecker())
    elif kind == "object":
        assert isinstance(json.loads(text), dict)
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    else:
        assert text in CHOICES, text
