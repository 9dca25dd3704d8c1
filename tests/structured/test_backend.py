"""The backend as the engine will drive it (phase 2): submit, poll, one matcher per sequence,
fill a step's rows, mask the logits, sample, accept; unconstrained rows share the batch."""

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from llm_worker.kernels.token_bitmask import apply_token_bitmask_reference
from llm_worker.models.config import ModelConfig
from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.backend import StructuredOutputBackend, StructuredOutputConfig
from llm_worker.structured.errors import NoTokenizerError
from llm_worker.structured.matcher import SequenceMatcher

SCHEMAS = Path(__file__).parent / "schemas"
MAX_STEPS = 300


def _constraints() -> list[StructuredOutputs]:
    schema = json.loads((SCHEMAS / "sentiment.json").read_text())
    return [
        StructuredOutputs.model_validate({"json": schema}),
        StructuredOutputs(regex=r"[0-9]{3}-[0-9]{4}"),
        StructuredOutputs(choice=["alpha", "beta", "gamma"]),
        StructuredOutputs.model_validate({"json": schema}),  # the same grammar, from the cache
    ]


def _accepts(constraint: StructuredOutputs, text: str) -> bool:
    if constraint.json_schema is not None:
        return jsonschema.Draft202012Validator(constraint.json_schema).is_valid(json.loads(text))
    if constraint.regex is not None:
        return re.fullmatch(constraint.regex, text) is not None
    return text in (constraint.choice or [])


def test_a_batch_of_constrained_and_free_rows_runs_to_valid_outputs(
    tokenizer: Any, smollm2_config: ModelConfig
) -> None:
    vocab_size, eos = smollm2_config.vocab_size, smollm2_config.eos_token_ids
    config = StructuredOutputConfig(max_rows=8, num_fill_threads=2)
    backend = StructuredOutputBackend.create(tokenizer, vocab_size, eos, config)
    constraints = _constraints()
    try:
        pending = [backend.submit(c) for c in constraints]
        matchers = [backend.matcher(p) for p in pending]  # result() waits, as a poll would
        outputs = _run(backend, matchers, vocab_size)
    finally:
        backend.shutdown()
    for constraint, token_ids in zip(constraints, outputs, strict=True):
        assert token_ids[-1] in eos, "every constrained row ended on its grammar's stop"
        text = tokenizer.decode(token_ids[:-1], skip_special_tokens=True)
        assert _accepts(constraint, text), text
    stats = backend.stats()
    assert stats.num_requests == {"json": 2, "regex": 1, "choice": 1}
    assert stats.num_cache_hits == 1 and stats.num_compiles == 3
    assert stats.num_mask_rows == sum(len(ids) for ids in outputs)


def _run(
    backend: StructuredOutputBackend, matchers: list[SequenceMatcher], vocab_size: int
) -> list[list[int]]:
    """Steps of a batch whose rows 0, 2, 4, ... are free and 1, 3, 5, ... constrained."""
    generator = torch.Generator().manual_seed(0)
    outputs: list[list[int]] = [[] for _ in matchers]
    live = list(range(len(matchers)))
    for _ in range(MAX_STEPS):
        if not live:
            return outputs
        logits = torch.randn(2 * len(live), vocab_size, generator=generator)  # [rows, vocab]
        free_rows = logits[0::2].clone()
        bitmask = backend.filler.fill([matchers[i] for i in live])
        row_idx = torch.arange(1, 2 * len(live), 2, dtype=torch.int32)
        apply_token_bitmask_reference(logits, bitmask, row_idx, vocab_size)
        assert torch.equal(logits[0::2], free_rows)  # the free rows are left alone
        token_ids = torch.multinomial(torch.softmax(logits[1::2], -1), 1, generator=generator)
        for i, token_id in zip(list(live), token_ids[:, 0].tolist(), strict=True):
            matchers[i].accept([token_id])  # raises if a masked token was drawn
            outputs[i].append(token_id)
            if matchers[i].is_terminated:
                live.remove(i)
    raise AssertionError(f"rows {live} did not end in {MAX_STEPS} steps")


def test_a_background_fill_is_inside_xgrammar_when_the_caller_goes_on(
    tokenizer: Any, smollm2_config: ModelConfig
) -> None:
    """The engine thread goes back to its own Python work as soon as the fill is submitted; a
    fill thread that still needed the GIL then would wait for the engine thread to block, and
    the fill would run after that work instead of beside it."""
    vocab_size, eos = smollm2_config.vocab_size, smollm2_config.eos_token_ids
    backend = StructuredOutputBackend.create(
        tokenizer, vocab_size, eos, StructuredOutputConfig(max_rows=8)
    )
    entered: list[bool] = []
    fill_rows = backend.filler._fill_rows

    def noting_entry(*args: Any) -> None:
        entered.append(True)
        fill_rows(*args)

    backend.filler._fill_rows = noting_entry  # type: ignore[method-assign]
    try:
        matchers = [backend.matcher(backend.submit(c)) for c in _constraints()]
        for drafts in ([()] * 4, [(), (17,), (), ()]):  # a step without and with a draft
            entered.clear()
            filled = backend.fill_in_background(matchers, drafts)
            assert entered, "fill_in_background returned before the fill reached xgrammar"
            num_rows = len(matchers) + sum(map(len, drafts))
            assert filled.result().bitmask.shape[0] == num_rows
    finally:
        backend.shutdown()


def test_a_model_without_a_tokenizer_has_no_backend(smollm2_config: ModelConfig) -> None:
    with pytest.raises(NoTokenizerError):
        StructuredOutputBackend.create(
            None, smollm2_config.vocab_size, smollm2_config.eos_token_ids,
            StructuredOutputConfig(max_rows=1),
        )  # fmt: skip
