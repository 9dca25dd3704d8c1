"""A job's outcome as workers publish it and clients poll it."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from llm_worker.schemas.job import SCHEMA_VERSION
from llm_worker.schemas.status import JobStatus

FinishReason = Literal["stop", "length", "abort"]


class ErrorCode:
    """Machine-readable reasons for a failed job; `message` says the details."""

    MALFORMED = "malformed"  # not JSON, or not an object
    INVALID = "invalid_request"  # schema violation
    TOO_LARGE = "message_too_large"  # over max_job_bytes
    PROMPT_TOO_LONG = "prompt_too_long"  # prompt + max_tokens over max_model_len or the cache
    UNKNOWN_MODEL = "unknown_model"
    EXPIRED = "deadline_exceeded"
    CANCELLED = "cancelled"
    INTERNAL = "internal_error"
    DUPLICATE_ID = "duplicate_id_conflict"  # the id is bound to other content
    POISON = "poison_job"  # its workers kept dying while it ran alone
    MISROUTED = "misrouted"  # Kafka: not on its id's partition, so its id cannot be bound


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timings(BaseModel):
    """Seconds; None where the job never reached that point."""

    model_config = ConfigDict(extra="forbid")

    queue_s: float | None = None  # enqueue (or receipt) to first scheduled
    ttft_s: float | None = None  # receipt to first output token
    tpot_s: float | None = None  # mean time per output token after the first
    e2e_s: float | None = None  # receipt to finish


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class TokenLogprob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_id: int
    logprob: float
    top: dict[int, float] = Field(default_factory=dict)


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    status: JobStatus
    text: str | None = None
    # a JSON-constrained job that finished with `stop`: its text parsed (schemas/structured.py)
    parsed: JsonValue | None = None
    token_ids: list[int] = Field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    logprobs: list[TokenLogprob] | None = None
    error: ErrorInfo | None = None
    attempts: int = 1
    worker_id: str | None = None
    model: str | None = None
    job_digest: str | None = None  # the content it answers (schemas/digest.py)
