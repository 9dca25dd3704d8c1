"""The compile cache (content hash plus vocabulary) and compilation off the caller's thread."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.sources import ConstraintSource
from llm_worker.structured.stats import StatsRecorder
from llm_worker.structured.vocab import GrammarVocab, grammar_vocab

AB = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
BA = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}


def _json(schema: Any) -> StructuredOutputs:
    return StructuredOutputs.model_validate({"json": schema})


def test_the_key_is_the_content_and_property_order_is_content() -> None:
    as_object = ConstraintSource.of(_json(AB))
    as_text = ConstraintSource.of(_json(json.dumps(AB, indent=4)))
    assert as_object.key == as_text.key  # the same schema however it was written
    assert ConstraintSource.of(_json(BA)).key != as_object.key  # the output's key order differs
    assert ConstraintSource.of(StructuredOutputs(regex="a")).key != (
        ConstraintSource.of(StructuredOutputs(grammar="a")).key
    )


def test_one_compilation_serves_every_request_for_the_same_constraint(
    vocab: GrammarVocab,
) -> None:
    stats = StatsRecorder()
    compiler = GrammarCompiler(vocab, stats)
    try:
        first = compiler.compile_now(_json(AB))
        assert compiler.compile_now(_json(dict(AB))) is first
        assert compiler.compile_now(_json(BA)) is not first
    finally:
        compiler.shutdown()
    snapshot = stats.snapshot()
    assert (snapshot.num_cache_queries, snapshot.num_cache_hits) == (3, 1)
    assert snapshot.num_compiles == 2 and snapshot.num_compile_errors == 0
    assert snapshot.compile_s > 0
    assert snapshot.num_requests == {"json": 3}


def test_a_vocabulary_with_other_tokens_has_its_own_fingerprint(
    tokenizer: Any, vocab: GrammarVocab
) -> None:
    padded = grammar_vocab(tokenizer, vocab.vocab_size + 64, vocab.stop_token_ids)
    other_stop = grammar_vocab(tokenizer, vocab.vocab_size, (0,))
    same = grammar_vocab(tokenizer, vocab.vocab_size, vocab.stop_token_ids)
    assert same.fingerprint == vocab.fingerprint
    assert len({vocab.fingerprint, padded.fingerprint, other_stop.fingerprint}) == 3


def test_the_cache_keeps_the_most_recent_grammars(vocab: GrammarVocab) -> None:
    compiler = GrammarCompiler(vocab, StatsRecorder(), max_cached_grammars=2)
    try:
        a = compiler.compile_now(StructuredOutputs(regex="a+"))
        b = compiler.compile_now(StructuredOutputs(regex="b+"))
        assert compiler.compile_now(StructuredOutputs(regex="a+")) is a  # a is now the newest
        compiler.compile_now(StructuredOutputs(regex="c+"))  # evicts b, the oldest
        assert compiler.compile_now(StructuredOutputs(regex="a+")) is a
        assert compiler.compile_now(StructuredOutputs(regex="b+")) is not b
    finally:
        compiler.shutdown()
    with pytest.raises(ValueError, match="max_cached_grammars"):
        GrammarCompiler(vocab, StatsRecorder(), max_cached_grammars=0)


def test_submit_returns_while_the_grammar_compiles_elsewhere(vocab: GrammarVocab) -> None:
    """The engine thread submits and polls; it never waits for a compilation."""
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    pool.submit(gate.wait)  # the pool's one thread is busy until the gate opens
    compiler = GrammarCompiler(vocab, StatsRecorder(), executor=pool)
    try:
        pending = compiler.submit(StructuredOutputs(choice=["red", "green"]))
        also_pending = compiler.submit(StructuredOutputs(choice=["red", "green"]))
        assert not pending.done() and not also_pending.done()
        gate.set()
        grammar = pending.result()
        assert also_pending.result() is grammar
        assert pending.source.kind == "choice"
    finally:
        gate.set()
        pool.shutdown()
