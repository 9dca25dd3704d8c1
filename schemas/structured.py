"""Structured outputs on the wire: OpenAI's `response_format` and vLLM's `structured_outputs`.

Both say what shape a job's output must have; the engine sees only `StructuredOutputs` (one of a
JSON schema, a regex, a list of choices or an EBNF grammar), and `response_format` is folded into
it by `constraint_for`. Everything here is checked without compiling anything: shape, sizes and
that exactly one kind is given. Whether a schema, regex or grammar compiles is the grammar
backend's question (worker/structured), and its answer is an `invalid_request` too.
"""

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

# Bounds on what one job may ask the grammar compiler to do; the job's own size bound comes first.
MAX_SCHEMA_CHARS = 65_536  # the schema as compact JSON
MAX_REGEX_CHARS = 4_096
MAX_GRAMMAR_CHARS = 65_536
MAX_CHOICES = 1_024
MAX_CHOICE_CHARS = 1_024

ConstraintKind = Literal["json", "regex", "choice", "grammar"]

# OpenAI's json_object mode: any JSON object (the grammar backend lets an object without
# `properties` hold any keys and values).
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}

_WIRE = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True, validate_by_alias=True)


def _schema_object(value: object) -> dict[str, Any]:
    """A JSON schema given as an object or as a JSON string -> the object, size-checked."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the JSON schema string is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"a JSON schema must be a JSON object, got {type(value).__name__}")
    size = len(json.dumps(value, separators=(",", ":")))
    if size > MAX_SCHEMA_CHARS:
        raise ValueError(f"the JSON schema is {size} chars, over the {MAX_SCHEMA_CHARS} limit")
    return value


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: exactly one of `json` (a JSON schema, as an object or a JSON
    string), `regex`, `choice` (the output is one of these strings) or `grammar` (EBNF with a
    `root` rule, in xgrammar's dialect of GBNF)."""

    model_config = _WIRE

    json_schema: dict[str, Any] | None = Field(default=None, alias="json")
    regex: Annotated[str, Field(min_length=1, max_length=MAX_REGEX_CHARS)] | None = None
    choice: list[Annotated[str, Field(max_length=MAX_CHOICE_CHARS)]] | None = None
    grammar: Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)] | None = None

    @field_validator("json_schema", mode="before")
    @classmethod
    def _parse_schema(cls, value: Any) -> Any:
        return None if value is None else _schema_object(value)

    @field_validator("choice")
    @classmethod
    def _check_choices(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("choice must list at least one string")
        if len(value) > MAX_CHOICES:
            raise ValueError(f"choice lists {len(value)} strings, over the {MAX_CHOICES} limit")
        if any("\0" in option for option in value):
            raise ValueError("choice strings must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> "StructuredOutputs":
        given = [name for name, value in self._kinds() if value is not None]
        if len(given) != 1:
            raise ValueError(
                "structured_outputs needs exactly one of json, regex, choice, grammar; got "
                + (", ".join(given) if given else "none")
            )
        return self

    def _kinds(self) -> tuple[tuple[ConstraintKind, object], ...]:
        return (
            ("json", self.json_schema),
            ("regex", self.regex),
            ("choice", self.choice),
            ("grammar", self.grammar),
        )

    @property
    def kind(self) -> ConstraintKind:
        return next(name for name, value in self._kinds() if value is not None)


class JsonSchemaFormat(BaseModel):
    """OpenAI's `response_format.json_schema`. Outputs always follow the schema exactly, so
    `strict` is accepted and changes nothing."""

    model_config = _WIRE

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @field_validator("schema_", mode="before")
    @classmethod
    def _parse_schema(cls, value: Any) -> Any:
        return _schema_object(value)


class TextResponseFormat(BaseModel):
    model_config = _WIRE

    type: Literal["text"]


class JsonObjectResponseFormat(BaseModel):
    model_config = _WIRE

    type: Literal["json_object"]


class JsonSchemaResponseFormat(BaseModel):
    model_config = _WIRE

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    TextResponseFormat | JsonObjectResponseFormat | JsonSchemaResponseFormat,
    Field(discriminator="type"),
]


def response_format_constraint(response_format: ResponseFormat | None) -> StructuredOutputs | None:
    """What an OpenAI `response_format` asks of the output; None for text (or no format)."""
    if isinstance(response_format, JsonSchemaResponseFormat):
        return StructuredOutputs.model_validate({"json": response_format.json_schema.schema_})
    if isinstance(response_format, JsonObjectResponseFormat):
        return StructuredOutputs.model_validate({"json": ANY_JSON_OBJECT})
    return None


def constraint_for(
    response_format: ResponseFormat | None, structured_outputs: StructuredOutputs | None
) -> StructuredOutputs | None:
    """The one constraint a job runs under. A job gives at most one of the two (Job checks)."""
    return structured_outputs or response_format_constraint(response_format)


def parsed_output(
    constraint: StructuredOutputs | None, text: str | None, finish_reason: str | None
) -> JsonValue | None:
    """The parsed copy of a JSON-constrained output that ran to its end; None otherwise (no
    JSON constraint, no text, or cut short by max_tokens, when the text is a prefix)."""
    if constraint is None or constraint.kind != "json" or text is None or finish_reason != "stop":
        return None
    try:
        value: JsonValue = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value
