"""The batch mask filler against xgrammar's own matcher: the same rows, bits that mean what
the matcher accepts, draft rows for verification, and the vocabulary's padding."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xgrammar as xgr

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.mask_filler import ALL_ALLOWED, MaskFiller
from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.stats import StatsRecorder
from llm_worker.structured.vocab import GrammarVocab, grammar_vocab
from tests.structured.walk import Walker, allowed_token_ids

SCHEMAS = Path(__file__).parent / "schemas"
CONSTRAINTS = [
    {"json": json.loads((SCHEMAS / "invoice.json").read_text())},
    {"json": json.loads((SCHEMAS / "event.json").read_text())},
    {"regex": r"[A-Z]{2}-[0-9]{3,5}( [a-z]+)?"},
    {"choice": ["approve", "reject", "escalate to a human"]},
    {"grammar": 'root ::= "(" [0-9]+ (" + " [0-9]+)* ")"'},
]


@pytest.fixture(scope="module")
def states(
    compiler: GrammarCompiler, vocab: GrammarVocab
) -> list[tuple[xgr.CompiledGrammar, list[int]]]:
    """(grammar, tokens accepted so far) at several points of walks through each grammar."""
    rng = np.random.default_rng(3)
    walker = Walker.of(vocab)
    found = []
    for constraint in CONSTRAINTS:
        grammar = compiler.compile_now(StructuredOutputs.model_validate(constraint))
        walk = walker.walk(SequenceMatcher(grammar), rng, 300)
        body = walk.token_ids[:-1] if walk.terminated else walk.token_ids
        for n in sorted({0, len(body) // 3, len(body) // 2, len(body)}):
            found.append((grammar, body[:n]))
    return found


def _xgrammar_row(grammar: xgr.CompiledGrammar, token_ids: list[int], vocab_size: int) -> Any:
    """The row xgrammar's own matcher fills, driven by xgrammar alone."""
    matcher = xgr.GrammarMatcher(grammar)
    assert all(matcher.accept_token(t) for t in token_ids)
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    return bitmask[0]


def test_filled_rows_are_xgrammars_rows(
    states: list[tuple[xgr.CompiledGrammar, list[int]]], vocab: GrammarVocab
) -> None:
    stats = StatsRecorder()
    capacity = len(states) + 3
    filler = MaskFiller(vocab.vocab_size, capacity, stats, num_threads=2)
    matchers = [SequenceMatcher.rebuild(grammar, ids) for grammar, ids in states]
    rows = filler.fill(matchers)
    assert rows.shape == (len(states), vocab.num_bitmask_words)
    for row, (grammar, ids) in zip(rows, states, strict=True):
        assert torch.equal(row, _xgrammar_row(grammar, ids, vocab.vocab_size))
    snapshot = stats.snapshot()
    assert (snapshot.num_mask_fills, snapshot.num_mask_rows) == (1, len(states))
    assert snapshot.mask_fill_s > 0
    rows.fill_(0)  # a step without drafts: one row each, the same rows
    filled = filler.fill_with_drafts(matchers, [()] * len(matchers))
    assert not filled.failed
    for row, (grammar, ids) in zip(filled.bitmask, states, strict=True):
        assert torch.equal(row, _xgrammar_row(grammar, ids, vocab.vocab_size))
    with pytest.raises(ValueError, match=f"over the {capacity} allocated"):
        filler.fill(matchers + matchers[:4])


def test_a_set_bit_is_a_token_the_matcher_accepts(
    states: list[tuple[xgr.CompiledGrammar, list[int]]], vocab: GrammarVocab
) -> None:
    rng = np.random.default_rng(11)
    filler = MaskFiller(vocab.vocab_size, 1, StatsRecorder())
    for grammar, ids in states[::2]:
        matcher = xgr.GrammarMatcher(grammar)
        assert all(matcher.accept_token(t) for t in ids)
        row = filler.fill([SequenceMatcher.rebuild(grammar, ids)])[0]
        allowed = allowed_token_ids(row, vocab.vocab_size)
        sample = np.concatenate(
            [rng.choice(allowed, min(40, allowed.size), replace=False),
             rng.integers(0, vocab.vocab_size, 80), np.array(vocab.stop_token_ids)]
        )  # fmt: skip
        allowed_set = set(allowed.tolist())
        for token_id in sample.tolist():
            assert (token_id in allowed_set) == matcher.fork().accept_token(token_id), token_id


def test_draft_rows_are_the_masks_after_each_draft_prefix(
    states: list[tuple[xgr.CompiledGrammar, list[int]]], vocab: GrammarVocab, tokenizer: Any
) -> None:
    rng = np.random.default_rng(5)
    walker = Walker.of(vocab)
    matchers, drafts = [], []
    for grammar, ids in states[1::3]:
        matcher = SequenceMatcher.rebuild(grammar, ids)
        ahead = walker.walk(SequenceMatcher.rebuild(grammar, ids), rng, 4).token_ids
        matchers.append(matcher)
        drafts.append(ahead)
    drafts[0] = drafts[0][:2] + tokenizer.encode(" certainly not") + drafts[0][2:]  # refused
    drafts[1] = []
    before = [
        (m.num_accepted_tokens, MaskFiller(vocab.vocab_size, 1, StatsRecorder()).fill([m]).clone())
        for m in matchers
    ]
    filler = MaskFiller(vocab.vocab_size, 64, StatsRecorder(), num_threads=2)
    filled = filler.fill_with_drafts(matchers, drafts)
    assert filled.failed == {}
    rows = filled.bitmask
    assert rows.shape[0] == sum(len(d) + 1 for d in drafts)
    offset = 0
    for (grammar, ids), tokens in zip(states[1::3], drafts, strict=True):
        reference = SequenceMatcher.rebuild(grammar, ids)
        for depth in range(len(tokens) + 1):
            if reference is None or reference.is_terminated:
                assert bool((rows[offset + depth] == ALL_ALLOWED).all())
                continue
            single = MaskFiller(vocab.vocab_size, 1, StatsRecorder()).fill([reference])[0]
            assert torch.equal(rows[offset + depth], single)
            if depth < len(tokens) and not reference.try_accept(tokens[depth]):
                reference = None
        offset += len(tokens) + 1
    for matcher, (num_accepted, mask) in zip(matchers, before, strict=True):
        assert matcher.num_accepted_tokens == num_accepted
        assert torch.equal(MaskFiller(vocab.vocab_size, 1, StatsRecorder()).fill([matcher]), mask)


def test_ids_past_the_tokenizer_are_never_allowed(
    tokenizer: Any, vocab: GrammarVocab, compiler: GrammarCompiler
) -> None:
    """An embedding padded past the tokenizer (a model vocab of 49,152 + 100)."""
    padded = grammar_vocab(tokenizer, vocab.vocab_size + 100, vocab.stop_token_ids)
    padded_compiler = GrammarCompiler(padded, StatsRecorder())
    try:
        grammar = padded_compiler.compile_now(StructuredOutputs(regex=".+"))
    finally:
        padded_compiler.shutdown()
    row = MaskFiller(padded.vocab_size, 1, StatsRecorder()).fill([SequenceMatcher(grammar)])[0]
    allowed = allowed_token_ids(row, padded.vocab_size)  # bits past it are no tokens at all
    assert allowed.size > 40_000 and allowed.max() < len(tokenizer)
