"""A sequence's matcher: accept, roll back, terminate, and the same state rebuilt from its
output tokens (preemption by recompute)."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xgrammar as xgr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured import matcher as matcher_module
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.matcher import GrammarRejected, SequenceMatcher
from llm_worker.structured.vocab import GrammarVocab
from tests.structured.walk import Walker

SCHEMAS = Path(__file__).parent / "schemas"


@pytest.fixture(scope="module")
def invoice(
    compiler: GrammarCompiler, vocab: GrammarVocab
) -> tuple[xgr.CompiledGrammar, list[int]]:
    """The invoice grammar and the tokens of one whole output, stop token last."""
    schema = json.loads((SCHEMAS / "invoice.json").read_text())
    grammar = compiler.compile_now(StructuredOutputs.model_validate({"json": schema}))
    rng = np.random.default_rng(7)
    for _ in range(20):
        walk = Walker.of(vocab).walk(SequenceMatcher(grammar), rng, 400)
        if walk.terminated:
            return grammar, walk.token_ids
    raise AssertionError("no walk through the invoice schema ended")


def _mask(matcher: SequenceMatcher, vocab: GrammarVocab) -> torch.Tensor:
    bitmask = torch.empty((1, vocab.num_bitmask_words), dtype=torch.int32)
    matcher.fill_row(bitmask, 0)
    return bitmask[0]


def test_a_rebuilt_matcher_has_the_state_of_the_one_that_ran(
    invoice: tuple[xgr.CompiledGrammar, list[int]], vocab: GrammarVocab
) -> None:
    grammar, token_ids = invoice
    running = SequenceMatcher(grammar)
    for n, token_id in enumerate(token_ids[:-1]):
        if n % 7 == 0:  # preempted here: recomputed from the tokens it has
            rebuilt = SequenceMatcher.rebuild(grammar, token_ids[:n])
            assert rebuilt.num_accepted_tokens == running.num_accepted_tokens == n
            assert torch.equal(_mask(rebuilt, vocab), _mask(running, vocab))
        running.accept([token_id])
    assert running.is_completed and not running.is_terminated
    running.accept(token_ids[-1:])  # the stop token
    assert running.is_terminated


def test_tokens_outside_the_grammar_are_refused(
    invoice: tuple[xgr.CompiledGrammar, list[int]], tokenizer: Any
) -> None:
    grammar, token_ids = invoice
    not_json = tokenizer.encode("Sure! Here is the invoice")
    matcher = SequenceMatcher(grammar)
    with pytest.raises(GrammarRejected, match="not allowed after 0 tokens"):
        matcher.accept(not_json)
    assert matcher.num_accepted_tokens == 0 and not matcher.try_accept(not_json[0])
    with pytest.raises(GrammarRejected):
        SequenceMatcher.rebuild(grammar, [*token_ids[:5], *not_json])


def test_a_batch_of_tokens_is_taken_as_each_matcher_alone_would(
    invoice: tuple[xgr.CompiledGrammar, list[int]], tokenizer: Any
) -> None:
    """try_accept_each (one call into xgrammar for a step's rows) against try_accept row by
    row: the same verdicts, the same states, refusals and ended grammars included."""
    grammar, token_ids = invoice
    not_json = tokenizer.encode("Sure")[0]
    # rows at every point of the output: its start, its middle, its last token, after its stop
    points = [0, 1, len(token_ids) // 2, len(token_ids) - 1, len(token_ids)]
    batch = [SequenceMatcher.rebuild(grammar, token_ids[:n]) for n in points]
    alone = [SequenceMatcher.rebuild(grammar, token_ids[:n]) for n in points]
    stop = token_ids[-1]  # a stop token: refused until the object is whole
    for next_tokens in ([token_ids[n] if n < len(token_ids) else not_json for n in points],
                        [not_json] * len(points), [stop] * len(points)):  # fmt: skip
        verdicts = SequenceMatcher.try_accept_each(batch, next_tokens)
        assert verdicts == [m.try_accept(t) for m, t in zip(alone, next_tokens, strict=True)]
        assert [m.num_accepted_tokens for m in batch] == [m.num_accepted_tokens for m in alone]
        assert [m.is_terminated for m in batch] == [m.is_terminated for m in alone]
        _assert_ended_as_xgrammar_says(batch + alone)
    assert SequenceMatcher.try_accept_each([], []) == []


def test_a_batch_that_takes_every_token_advances_each_matcher(
    invoice: tuple[xgr.CompiledGrammar, list[int]],
) -> None:
    """The common step (every token allowed, by the mask) through xgrammar's FFI call, whose
    result is read without a round trip per row: each matcher as try_accept would leave it,
    stop tokens ending theirs."""
    assert matcher_module._NATIVE_BATCH_ACCEPT is not None, "xgrammar moved its batch accept"
    grammar, token_ids = invoice
    points = list(range(len(token_ids)))
    batch = [SequenceMatcher.rebuild(grammar, token_ids[:n]) for n in points]
    alone = [SequenceMatcher.rebuild(grammar, token_ids[:n]) for n in points]
    next_tokens = [token_ids[n] for n in points]
    assert SequenceMatcher.try_accept_each(batch, next_tokens) == [True] * len(points)
    assert all(m.try_accept(t) for m, t in zip(alone, next_tokens, strict=True))
    assert [m.num_accepted_tokens for m in batch] == [m.num_accepted_tokens for m in alone]
    assert [m.is_terminated for m in batch] == [m.is_terminated for m in alone]
    assert batch[-1].is_terminated
    _assert_ended_as_xgrammar_says(batch)


def test_rollback_is_bounded_by_what_was_accepted(
    invoice: tuple[xgr.CompiledGrammar, list[int]],
) -> None:
    grammar, token_ids = invoice
    matcher = SequenceMatcher.rebuild(grammar, token_ids)
    assert matcher.is_terminated
    matcher.rollback(1)  # the stop token: the output is whole again, not ended
    assert not matcher.is_terminated and matcher.is_completed
    _assert_ended_as_xgrammar_says([matcher])
    with pytest.raises(ValueError, match="cannot roll back"):
        matcher.rollback(len(token_ids))
    with pytest.raises(ValueError, match="cannot roll back"):
        matcher.rollback(-1)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_accepts_and_rollbacks_keep_the_state_of_the_tokens_kept(
    data: st.DataObject,
    invoice: tuple[xgr.CompiledGrammar, list[int]],
    vocab: GrammarVocab,
) -> None:
    """Speculative decoding's bookkeeping: accept drafts, roll back the rejected ones."""
    grammar, token_ids = invoice
    matcher = SequenceMatcher(grammar)
    kept: list[int] = []  # the oracle: the tokens that stand
    for _ in range(data.draw(st.integers(1, 6))):
        room = len(token_ids) - len(kept)
        num_accepted = data.draw(st.integers(0, min(room, 12)))
        matcher.accept(token_ids[len(kept) : len(kept) + num_accepted])
        kept = token_ids[: len(kept) + num_accepted]
        num_rolled_back = data.draw(st.integers(0, len(kept)))
        matcher.rollback(num_rolled_back)
        kept = kept[: len(kept) - num_rolled_back]
        assert matcher.num_accepted_tokens == len(kept)
        _assert_ended_as_xgrammar_says([matcher])
    fresh = SequenceMatcher.rebuild(grammar, kept)
    assert matcher.is_terminated == fresh.is_terminated
    if not fresh.is_terminated:
        assert torch.equal(_mask(matcher, vocab), _mask(fresh, vocab))


def _assert_ended_as_xgrammar_says(matchers: list[SequenceMatcher]) -> None:
    """is_terminated is kept on the Python side; xgrammar's own matcher is the oracle."""
    assert [m.is_terminated for m in matchers] == [
        bool(m.xgr_matcher.is_terminated()) for m in matchers
    ]
