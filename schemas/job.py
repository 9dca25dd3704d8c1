"""A prompt job as producers put it on a queue."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_worker.schemas.sampling import SamplingParams
from llm_worker.schemas.structured import ResponseFormat
from llm_worker.schemas.text import INT32_MAX, IsoDatetime, SchemaVersion, Text, TokenId

SCHEMA_VERSION: Literal[1] = 1
MAX_NAME_CHARS = 256  # model names and cache salts: hashed and logged, never long


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: Text


class Job(BaseModel):
    """Exactly one of `prompt`, `prompt_token_ids` or `messages` carries the input.

    Strict like SamplingParams: no bool or float read as an int, timestamps only as ISO 8601
    strings, every string valid Unicode (see schemas/text.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: SchemaVersion = SCHEMA_VERSION
    id: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:@/+=-]+$")]
    model: Annotated[Text, Field(max_length=MAX_NAME_CHARS)] | None = None  # None: any
    prompt: Text | None = None
    prompt_token_ids: list[TokenId] | None = None  # checked against the vocabulary on admission
    messages: list[ChatMessage] | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    # OpenAI's output format; the engine runs it as sampling.structured_outputs (constraint_for)
    response_format: ResponseFormat | None = None
    priority: Annotated[int, Field(ge=-INT32_MAX, le=INT32_MAX)] = 0  # higher is admitted first
    deadline: IsoDatetime | None = None  # absolute, timezone-aware; expired jobs never run
    # isolates prefix-cache sharing between tenants
    cache_salt: Annotated[Text, Field(max_length=MAX_NAME_CHARS)] | None = None
    metadata: dict[Text, Text] = Field(default_factory=dict)  # e.g. traceparent, tenant
    created_at: IsoDatetime | None = None

    @model_validator(mode="after")
    def _exactly_one_input(self) -> "Job":
        given = [
            name
            for name, value in (
                ("prompt", self.prompt),
                ("prompt_token_ids", self.prompt_token_ids),
                ("messages", self.messages),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "exactly one of prompt, prompt_token_ids, messages must be set; got "
                + (", ".join(given) if given else "none")
            )
        if self.prompt is not None and self.prompt == "":
            raise ValueError("prompt must not be empty")
        if self.prompt_token_ids is not None and not self.prompt_token_ids:
            raise ValueError("prompt_token_ids must not be empty")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        format_type = self.response_format.type if self.response_format is not None else "text"
        if format_type != "text" and self.sampling.structured_outputs is not None:
            raise ValueError("set response_format or sampling.structured_outputs, not both")
        if self.deadline is not None and self.deadline.tzinfo is None:
            raise ValueError("deadline must carry a timezone (e.g. 2026-01-01T00:00:00Z)")
        return self

    @property
    def traceparent(self) -> str | None:
        return self.metadata.get("traceparent")
