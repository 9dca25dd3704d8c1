"""Sampling parameters: the wire type and the engine's input are the same object."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.schemas.text import INT32_MAX, SEED_MAX, Text, TokenId

MAX_STOP_STRINGS = 32
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024


class SamplingParams(BaseModel):
    """How to pick tokens for one job. Defaults match vLLM's (greedy only at temperature 0).

    Strict: a bool or a float is never read as an int; every number the engine puts in a
    tensor or a generator is bounded here, so no value can overflow it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    temperature: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] = -1  # -1 or 0: no top-k
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] | None = None
    stop: Annotated[
        list[Annotated[Text, Field(max_length=MAX_STOP_STRING_CHARS)]],
        Field(max_length=MAX_STOP_STRINGS),
    ] = Field(default_factory=list)
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] = Field(
        default_factory=list
    )
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] = 16
    min_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    ignore_eos: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    include_stop_str_in_output: bool = False
    # false: this job never runs with speculative decoding (where the worker has it on)
    speculative: bool = True
    # the output must match this JSON schema, regex, choice or grammar (schemas/structured.py)
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="after")
    def _check_consistency(self) -> "SamplingParams":
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        return self

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )
