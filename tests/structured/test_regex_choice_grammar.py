"""Regex, choice, EBNF grammar and json_object constraints end to end without the model: walks
through each grammar that reach the stop token produce text its own oracle accepts."""

import ast
import json
import re
from typing import Any

import numpy as np
import pytest
import xgrammar as xgr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_worker.schemas.structured import ANY_JSON_OBJECT, StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.vocab import GrammarVocab
from tests.structured.walk import Walk, Walker

REGEXES = [
    r"[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}",  # a postcode-like id
    r"\(?[0-9]{3}\)?[ -]?[0-9]{3}-[0-9]{4}",  # a US phone number
    r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    r"[a-z][a-z0-9_.]{0,15}@[a-z]{2,10}\.(com|org|net)",
    r"(yes|no|maybe)(, because [a-z ]{1,30})?",
    r"-?(0|[1-9][0-9]{0,5})(\.[0-9]{1,3})?",
    r"[^\n]{1,20}",
    r"(https?://)?[a-z0-9-]{1,12}(\.[a-z]{2,6}){1,2}(/[a-z0-9]{0,8})?",
]
ARITHMETIC = r"""
root ::= expr
expr ::= term ((" + " | " - ") term)*
term ::= factor ((" * " | " / ") factor)*
factor ::= number | "(" expr ")" | "-" factor
number ::= [1-9] [0-9]{0,3} | "0"
"""
CHOICES = ["positive", "negative", "neutral", 'mixed "both"', "n/a\\none", "très bien", "🙂 fine"]
NUM_WALKS = 6
NOT_NUL = st.characters(blacklist_characters="\0")  # refused in choices (test_wire.py)


@pytest.fixture(scope="module")
def walker(vocab: GrammarVocab) -> Walker:
    return Walker.of(vocab)


def _walks(
    compiler: GrammarCompiler, walker: Walker, constraint: dict[str, Any], seed: int
) -> list[Walk]:
    grammar = compiler.compile_now(StructuredOutputs.model_validate(constraint))
    rng = np.random.default_rng(seed)
    walks = [walker.walk(SequenceMatcher(grammar), rng, 200) for _ in range(NUM_WALKS)]
    ended = [w for w in walks if w.terminated]
    assert len(ended) >= NUM_WALKS // 2, f"only {len(ended)} walks ended"
    return ended


@pytest.mark.parametrize("regex", REGEXES)
def test_regex_outputs_match_the_regex(
    regex: str, compiler: GrammarCompiler, walker: Walker, tokenizer: Any
) -> None:
    for walk in _walks(compiler, walker, {"regex": regex}, seed=len(regex)):
        text = walker.text(walk, tokenizer)
        assert re.fullmatch(regex, text), text


def test_choice_outputs_are_one_of_the_choices(
    compiler: GrammarCompiler, walker: Walker, tokenizer: Any
) -> None:
    seen = set()
    for seed in range(4):
        for walk in _walks(compiler, walker, {"choice": CHOICES}, seed):
            text = walker.text(walk, tokenizer)
            assert text in CHOICES, text
            seen.add(text)
    assert len(seen) >= 3  # the walks reach several choices, not one


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    choices=st.lists(st.text(NOT_NUL, max_size=12), min_size=1, max_size=5),
    other=st.text(NOT_NUL, max_size=12),
)
def test_a_choice_grammar_is_exactly_its_choices(
    choices: list[str], other: str, compiler: GrammarCompiler
) -> None:
    grammar = compiler.compile_now(StructuredOutputs(choice=choices))

    def whole(text: str) -> bool:
        matcher = xgr.GrammarMatcher(grammar)
        return matcher.accept_string(text) and matcher.is_completed()

    assert all(whole(c) for c in choices)
    if other not in choices:
        assert not whole(other)


def test_grammar_outputs_parse_as_arithmetic(
    compiler: GrammarCompiler, walker: Walker, tokenizer: Any
) -> None:
    for seed in range(3):
        for walk in _walks(compiler, walker, {"grammar": ARITHMETIC}, seed):
            text = walker.text(walk, tokenizer)
            tree = ast.parse(text, mode="eval")  # the oracle: Python's own parser
            allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator,
                       ast.unaryop)  # fmt: skip
            assert all(isinstance(node, allowed) for node in ast.walk(tree)), text


def test_json_object_outputs_are_json_objects(
    compiler: GrammarCompiler, walker: Walker, tokenizer: Any
) -> None:
    for walk in _walks(compiler, walker, {"json": ANY_JSON_OBJECT}, seed=1):
        assert isinstance(json.loads(walker.text(walk, tokenizer)), dict)
