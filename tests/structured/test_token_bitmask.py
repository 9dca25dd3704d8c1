"""The mask kernel against its torch reference (CPU interpreter, and the GPU at real sizes), and
the reference's meaning against xgrammar's own apply and a real grammar's row."""

import pytest
import torch
import xgrammar as xgr

from llm_worker.kernels.token_bitmask import apply_token_bitmask_, apply_token_bitmask_reference
from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.mask_filler import MaskFiller
from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.stats import StatsRecorder
from llm_worker.structured.vocab import GrammarVocab

NEG_INF = float("-inf")


def _random_bitmask(num_rows: int, num_words: int, generator: torch.Generator) -> torch.Tensor:
    words = torch.randint(-(2**31), 2**31, (num_rows, num_words), generator=generator)
    return words.to(torch.int32)


def _case(
    num_rows: int, num_cols: int, vocab_size: int, row_idx: list[int], dtype: torch.dtype,
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    generator = torch.Generator().manual_seed(num_cols + len(row_idx))
    logits = torch.randn(num_rows, num_cols, generator=generator).to(dtype)
    bitmask = _random_bitmask(len(row_idx), (vocab_size + 31) // 32, generator)
    rows = torch.tensor(row_idx, dtype=torch.int32)
    return logits.to(device), bitmask.to(device), rows.to(device)


@pytest.mark.parametrize(
    ("num_rows", "num_cols", "vocab_size", "row_idx"),
    [
        (4, 320, 320, [0, 1, 2, 3]),  # every row, vocab a multiple of 32
        (5, 301, 301, [4, 0, 2]),  # some rows, out of order; a partial last word
        (3, 2200, 2100, [1]),  # logits padded past the vocab; a second program per row
        (3, 250, 256, [2, 0]),  # a bitmask wider than the logits
        (2, 64, 64, []),  # no constrained row
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_kernel_is_the_reference(
    num_rows: int, num_cols: int, vocab_size: int, row_idx: list[int], dtype: torch.dtype
) -> None:
    logits, bitmask, rows = _case(num_rows, num_cols, vocab_size, row_idx, dtype)
    expected = logits.clone()
    apply_token_bitmask_reference(expected, bitmask, rows, vocab_size)
    apply_token_bitmask_(logits, bitmask, rows, vocab_size)
    assert torch.equal(logits, expected)
    untouched = [r for r in range(num_rows) if r not in row_idx]
    assert not torch.isinf(logits[untouched]).any()


def test_the_reference_is_xgrammars_apply_and_masks_the_padding() -> None:
    generator = torch.Generator().manual_seed(1)
    vocab_size, num_rows, rows = 1000, 6, [5, 1, 3]
    logits = torch.randn(num_rows, vocab_size + 24, generator=generator)
    bitmask = _random_bitmask(num_rows, (vocab_size + 31) // 32, generator)
    theirs = logits.clone()
    xgr.apply_token_bitmask_inplace(theirs, bitmask, vocab_size=vocab_size, indices=rows)
    ours = logits.clone()
    row_idx = torch.tensor(rows, dtype=torch.int32)
    apply_token_bitmask_reference(ours, bitmask[rows].contiguous(), row_idx, vocab_size)
    assert torch.equal(ours[:, :vocab_size], theirs[:, :vocab_size])
    # xgrammar leaves ids past vocab_size as they were; here they can never be sampled
    assert torch.equal(theirs[:, vocab_size:], logits[:, vocab_size:])
    assert bool((ours[rows, vocab_size:] == NEG_INF).all())


def test_a_masked_row_keeps_exactly_the_tokens_the_grammar_allows(
    compiler: GrammarCompiler, vocab: GrammarVocab, tokenizer: object
) -> None:
    grammar = compiler.compile_now(StructuredOutputs(choice=["yes", "no", "maybe later"]))
    matcher = SequenceMatcher(grammar)
    bitmask = MaskFiller(vocab.vocab_size, 1, StatsRecorder()).fill([matcher])
    logits = torch.zeros(2, vocab.vocab_size)
    apply_token_bitmask_(logits, bitmask.clone(), torch.tensor([1], dtype=torch.int32),
                         vocab.vocab_size)  # fmt: skip
    kept = torch.nonzero(logits[1] == 0).flatten().tolist()
    assert kept
    for token_id in kept:
        assert matcher.try_accept(token_id)
        matcher.rollback(1)
    assert {tokenizer.decode([t]) for t in kept} >= {"yes", "no"}  # type: ignore[attr-defined]
    assert not torch.isinf(logits[0]).any()


def test_bad_arguments_are_refused() -> None:
    logits, bitmask, rows = _case(2, 64, 64, [0], torch.float32)
    with pytest.raises(ValueError, match="bitmask must be a contiguous int32"):
        apply_token_bitmask_(logits, bitmask.to(torch.int64), rows, 64)
    with pytest.raises(ValueError, match="row_idx must be int32/int64"):
        apply_token_bitmask_(logits, bitmask, rows.float(), 64)
    with pytest.raises(ValueError, match=r"vocab_size 65 must be in 1\.\.64"):
        apply_token_bitmask_(logits, bitmask, rows, 65)
    with pytest.raises(ValueError, match="logits must be a float32/float16/bfloat16"):
        apply_token_bitmask_(logits.t(), bitmask, rows, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("num_cols", "vocab_size"), [(128256, 128256), (151936, 151665)])
def test_the_kernel_is_the_reference_on_the_gpu_at_real_sizes(
    dtype: torch.dtype, num_cols: int, vocab_size: int
) -> None:
    """Llama-3's vocabulary, and Qwen2's embedding padded past its tokenizer."""
    row_idx = list(range(0, 256, 3))
    logits, bitmask, rows = _case(256, num_cols, vocab_size, row_idx, dtype, "cuda")
    expected = logits.clone()
    apply_token_bitmask_reference(expected, bitmask, rows, vocab_size)
    apply_token_bitmask_(logits, bitmask, rows, vocab_size)
    assert torch.equal(logits, expected)
