"""OpenAI batch JSONL lines <-> Jobs and Results (/v1/completions, /v1/chat/completions)."""

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llm_worker.schemas import ChatMessage, ErrorCode, Job, JobStatus, Result, SamplingParams
from llm_worker.schemas.structured import ResponseFormat, StructuredOutputs

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


class _Body(BaseModel):
    """Request body fields both endpoints share; unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    speculative: bool | None = None  # false: no speculative decoding for this request
    response_format: ResponseFormat | None = None  # OpenAI's; becomes the Job's
    structured_outputs: StructuredOutputs | None = None  # vLLM's; goes to SamplingParams
    n: Literal[1] = 1
    stream: Literal[False] = False
    user: str | None = None

    def sampling(self, default_max_tokens: int, logprobs: int | None) -> SamplingParams:
        fields = self.model_dump(
            exclude_none=True,
            exclude={
                "model",
                "n",
                "stream",
                "user",
                "stop",
                "max_tokens",
                "prompt",
                "messages",
                "logprobs",
                "top_logprobs",
                "max_completion_tokens",
                "response_format",
            },
        )
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        max_tokens = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return SamplingParams(**fields, stop=stop, max_tokens=max_tokens, logprobs=logprobs)


class CompletionBody(_Body):
    prompt: str | list[int]
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: str | list[int]) -> str | list[int]:
        if len(v) == 0:
            raise ValueError("prompt must not be empty")
        return v


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1)
    method: Literal["POST"]
    url: Literal["/v1/completions", "/v1/chat/completions"]
    body: dict[str, Any]


class LineError(Exception):
    """Why one input line is not a usable request: an ErrorCode and what is wrong with it."""

    def __init__(self, custom_id: str | None, code: str, line_no: int, detail: str) -> None:
        super().__init__(f"line {line_no}: {detail}")
        self.custom_id = custom_id
        self.code = code
        self.line_no = line_no
        self.detail = detail

    @property
    def message(self) -> str:
        """The detail with its line number, as the line's output record says it."""
        return f"line {self.line_no}: {self.detail}"


def describe_validation(err: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: `where: what` for each problem, `; `-separated."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{prefix}{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def parse_line(raw: str | bytes, line_no: int) -> tuple[BatchLine, Job]:
    """One input line -> (the line, the Job it asks for). Raises LineError with a clear reason."""
    return parse_request(decode_line(raw, line_no), line_no)


def decode_line(raw: str | bytes, line_no: int) -> object:
    """The line's JSON value; LineError (malformed) when it has none."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        raise LineError(None, ErrorCode.MALFORMED, line_no, f"not valid JSON ({e})") from e


def parse_request(data: object, line_no: int) -> tuple[BatchLine, Job]:
    """A decoded line -> (the line, the Job it asks for). Raises LineError with a clear reason."""
    custom_id = data.get("custom_id") if isinstance(data, dict) else None
    custom_id = custom_id if isinstance(custom_id, str) else None
    try:
        line = BatchLine.model_validate(data)
    except ValidationError as e:
        raise LineError(custom_id, ErrorCode.INVALID, line_no, describe_validation(e)) from e
    try:
        job = _job(line, line_no)
    except ValidationError as e:
        raise LineError(
            custom_id, ErrorCode.INVALID, line_no, describe_validation(e, "body.")
        ) from e
    return line, job


def _job(line: BatchLine, line_no: int) -> Job:
    job_id = _job_id(line.custom_id, line_no)
    if line.url == CHAT:
        chat = ChatBody.model_validate(line.body)
        max_tokens = chat.max_completion_tokens or chat.max_tokens
        chat = chat.model_copy(update={"max_tokens": max_tokens})
        logprobs = (chat.top_logprobs or 0) if chat.logprobs else None
        return Job(
            id=job_id,
            model=chat.model,
            messages=chat.messages,
            sampling=chat.sampling(256, logprobs),
            response_format=chat.response_format,
        )
    cmpl = CompletionBody.model_validate(line.body)
    prompt = cmpl.prompt
    return Job(
        id=job_id,
        model=cmpl.model,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_token_ids=prompt if isinstance(prompt, list) else None,
        sampling=cmpl.sampling(16, cmpl.logprobs),
        response_format=cmpl.response_format,
    )


def _job_id(custom_id: str, line_no: int) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in custom_id)[:200]
    return f"{line_no}-{safe}"


def error_line(custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def result_line(line: BatchLine, result: Result) -> dict[str, Any]:
    if result.status is not JobStatus.COMPLETED:
        err = result.error
        return error_line(
            line.custom_id,
            err.code if err else ErrorCode.INTERNAL,
            err.message if err else result.status.value,
        )
    text = result.text or ""
    if line.url == CHAT:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text}
        obj = "text_completion"
    choice["finish_reason"] = result.finish_reason
    choice["logprobs"] = (
        None
        if result.logprobs is None
        else {
            "token_ids": [t.token_id for t in result.logprobs],
            "token_logprobs": [t.logprob for t in result.logprobs],
            "top_logprobs": [{str(k): v for k, v in t.top.items()} for t in result.logprobs],
        }
    )
    usage = result.usage
    body = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": obj,
        "created": int(time.time()),
        "model": result.model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        },
    }
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": line.custom_id,
        "response": {"status_code": 200, "request_id": result.id, "body": body},
        "error": None,
    }
