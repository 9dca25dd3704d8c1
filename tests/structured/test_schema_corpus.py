"""The grammar backend end to end without the model: every schema of the extraction corpus
compiles, and random walks through its grammar (SmolLM2 tokenizer) that reach the stop token
produce JSON that validates against the schema, formats included."""

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.vocab import GrammarVocab
from tests.structured.walk import Walker

SCHEMAS = sorted((Path(__file__).parent / "schemas").glob("*.json"))
NUM_WALKS = 4
MAX_WALK_TOKENS = 400

# jsonschema checks date, email, ipv4, ipv6 and uuid by itself; date-time and time need a
# package we do not install, so Python's own parsers check them here.
FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(datetime.datetime.fromisoformat)
FORMATS.checks("time", raises=ValueError)(datetime.time.fromisoformat)


@pytest.fixture(scope="module")
def walker(vocab: GrammarVocab) -> Walker:
    return Walker.of(vocab)


def _schema_nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schema_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_nodes(value)


def test_the_corpus_covers_real_extraction_schemas() -> None:
    assert len(SCHEMAS) >= 50
    uses: dict[str, int] = {}
    for path in SCHEMAS:
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        keys = {key for node in _schema_nodes(schema) for key in node}
        nested = any(
            node.get("type") == "object" and node is not schema for node in _schema_nodes(schema)
        )
        for feature in (
            "minItems", "maxItems", "enum", "required", "pattern", "format", "minimum",
            "maximum", "$defs", "$ref", "anyOf", "oneOf", "const", "prefixItems",
        ):  # fmt: skip
            uses[feature] = uses.get(feature, 0) + int(feature in keys)
        uses["nested objects"] = uses.get("nested objects", 0) + int(nested)
    assert all(count >= 1 for count in uses.values()), uses
    assert uses["nested objects"] >= 25 and uses["$ref"] >= 5 and uses["format"] >= 15


@pytest.mark.parametrize("path", SCHEMAS, ids=[p.stem for p in SCHEMAS])
def test_walks_through_each_schema_validate(
    path: Path, compiler: GrammarCompiler, walker: Walker, tokenizer: Any
) -> None:
    schema = json.loads(path.read_text())
    grammar = compiler.compile_now(StructuredOutputs.model_validate({"json": schema}))
    validator = jsonschema.Draft202012Validator(schema, format_checker=FORMATS)
    rng = np.random.default_rng(sum(path.stem.encode()))
    num_terminated = 0
    for _ in range(NUM_WALKS):
        walk = walker.walk(SequenceMatcher(grammar), rng, MAX_WALK_TOKENS)
        if not walk.terminated:
            continue
        num_terminated += 1
        text = walker.text(walk, tokenizer)
        errors = [e.message for e in validator.iter_errors(json.loads(text))]
        assert not errors, (text, errors)
    assert num_terminated >= NUM_WALKS // 2, f"only {num_terminated} walks reached the end"
