"""Bad constraints become typed errors with the invalid_request code, naming the problem; the
compiler keeps serving other constraints."""

from typing import Any

import pytest

from llm_worker.schemas import ErrorCode
from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.errors import (
    InvalidChoiceError,
    InvalidGrammarError,
    InvalidRegexError,
    InvalidSchemaError,
    NoTokenizerError,
    StructuredOutputError,
    UnsupportedSchemaFeatureError,
)
from llm_worker.structured.schema_check import MAX_SCHEMA_DEPTH
from llm_worker.structured.sources import choice_grammar
from llm_worker.structured.vocab import grammar_vocab

STRING = {"type": "string"}


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


CASES = [
    ({"json": {"type": "nonsense"}}, InvalidSchemaError, "'type' at #"),
    ({"json": {"type": [{"a": 1}]}}, InvalidSchemaError, "'type' at #"),
    ({"json": {"$ref": "#/$defs/missing"}}, InvalidSchemaError, "$defs"),
    ({"json": {"type": "object", "properties": []}}, InvalidSchemaError, "'properties' at #"),
    ({"json": {"anyOf": []}}, InvalidSchemaError, "'anyOf' at #"),
    ({"json": {"type": "array", "items": [STRING]}}, InvalidSchemaError, "#/items"),
    ({"json": {"type": "integer", "minimum": 5, "maximum": 3}}, InvalidSchemaError, "minimum"),
    ({"json": {"type": "string", "pattern": "(ab"}}, InvalidSchemaError, "parenthesis"),
    ({"json": {"not": STRING}}, UnsupportedSchemaFeatureError, "'not' at #"),
    (
        {"json": {"type": "object", "properties": {"a": {"if": STRING, "then": STRING}}}},
        UnsupportedSchemaFeatureError,
        "'if' at #/properties/a",
    ),
    ({"json": {"type": "array", "uniqueItems": True}}, UnsupportedSchemaFeatureError, "uniq"),
    ({"json": {"type": "array", "contains": STRING}}, UnsupportedSchemaFeatureError, "contains"),
    ({"json": {"type": "number", "multipleOf": 0.5}}, UnsupportedSchemaFeatureError, "multip"),
    ({"json": {"$ref": "https://example.com/s.json"}}, UnsupportedSchemaFeatureError, "$ref"),
    ({"json": {"allOf": [STRING, {"maxLength": 3}]}}, UnsupportedSchemaFeatureError, "allOf"),
    (
        {"json": {"oneOf": [{"type": "integer"}, {"type": "number"}]}},
        UnsupportedSchemaFeatureError,
        "branches may overlap",
    ),
    ({"json": {"type": "string", "format": "iri"}}, UnsupportedSchemaFeatureError, "'iri'"),
    (
        {"json": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 4}},
        UnsupportedSchemaFeatureError,
        "put the length in the pattern",
    ),
    (
        {"json": {"type": "string", "format": "date", "pattern": "^2"}},
        UnsupportedSchemaFeatureError,
        "format 'date' together with a pattern",
    ),
    (
        {"json": {"type": "object", "patternProperties": {"^a": STRING}}},
        UnsupportedSchemaFeatureError,
        "patternProperties",
    ),
    ({"json": {"pattern": "^a$"}}, UnsupportedSchemaFeatureError, "without 'type': 'string'"),
    ({"json": {"type": "string", "pattern": r"^\p{L}$"}}, UnsupportedSchemaFeatureError, "p{L}"),
    ({"json": {"type": "string", "pattern": r'^["\\]$'}}, UnsupportedSchemaFeatureError, "raw"),
    ({"json": _nested(MAX_SCHEMA_DEPTH + 2)}, UnsupportedSchemaFeatureError, "nested over"),
    ({"regex": "(abc"}, InvalidRegexError, "parenthesis is not closed"),
    ({"regex": "(?=a)a"}, InvalidRegexError, "Lookahead is not supported"),
    ({"regex": "a{3,1}"}, InvalidRegexError, "3 > 1"),
    ({"grammar": "root ::= "}, InvalidGrammarError, "Expect element"),
    ({"grammar": "root ::= undefined_rule"}, InvalidGrammarError, "undefined_rule"),
    ({"grammar": 'start ::= "a"'}, InvalidGrammarError, 'root rule with name "root"'),
    ({"grammar": r"root ::= [\ud800-\udfff]"}, InvalidGrammarError, "only UTF-16 surrogates"),
]


@pytest.mark.parametrize(
    ("constraint", "error", "names"),
    CASES,
    ids=[f"{c[1].__name__}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_constraints_fail_with_a_typed_invalid_request(
    constraint: dict[str, Any],
    error: type[StructuredOutputError],
    names: str,
    compiler: GrammarCompiler,
) -> None:
    pending = compiler.submit(StructuredOutputs.model_validate(constraint))
    with pytest.raises(error) as info:
        pending.result()
    assert info.value.code == ErrorCode.INVALID
    assert names in info.value.message
    assert info.value.message.startswith(error.problem)
    assert "/project/cpp" not in info.value.message  # xgrammar's source locations are cut


def test_a_failed_constraint_fails_again_from_the_cache_and_others_still_compile(
    compiler: GrammarCompiler,
) -> None:
    bad = StructuredOutputs(regex="(unclosed")
    first, second = compiler.submit(bad), compiler.submit(bad)
    for pending in (first, second):
        with pytest.raises(InvalidRegexError):
            pending.result()
    assert compiler.compile_now(StructuredOutputs(regex="[0-9]+")) is not None


def test_empty_choices_are_refused_before_and_inside_the_backend() -> None:
    with pytest.raises(ValueError, match="at least one string"):
        StructuredOutputs(choice=[])
    with pytest.raises(InvalidChoiceError, match="at least one string"):
        choice_grammar([])


def test_a_model_without_a_tokenizer_refuses_constraints() -> None:
    with pytest.raises(NoTokenizerError) as info:
        grammar_vocab(None, 49152, [2])
    assert info.value.code == ErrorCode.INVALID
    assert "need the model's tokenizer" in info.value.message
