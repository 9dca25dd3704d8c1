"""paged_attention against the torch reference, at sizes the CPU interpreter runs in seconds.

fp32 only here: the interpreter (triton 3.9) computes bf16 dot products wrongly, so the 16-bit
dtypes are covered by test_kernels_gpu.py on CUDA.
"""

from typing import Any

import pytest
import torch
import triton

from llm_worker.kernels import paged_attention as paged_attention_module
from llm_worker.kernels import reference
from llm_worker.kernels.attention_config import (
    INTERPRETER_NUM_SMS,
    AttentionConfig,
    choose_config,
    device_limits,
)
from llm_worker.kernels.paged_attention import paged_attention, paged_attention_with_config
from tests.kernels.paged_cases import PagedBatch, make_paged_batch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (context length incl. new tokens, new tokens): prefill, chunked prefill over a cached prefix,
# decode, verification of 3 draft tokens, a sequence with nothing scheduled, a block-aligned one.
MIXED = [(37, 37), (53, 19), (70, 1), (45, 4), (20, 0), (32, 1)]
SCALE = 0.37
# On CUDA, fp32 keys always come from the cache (TMA serves 16-bit K/V): test_kernels_gpu.py
# covers the step-K/V path there.
interpreter_only = pytest.mark.skipif(DEVICE == "cuda", reason="fp32 on CUDA reads the cache")


def _assert_matches_reference(batch: PagedBatch, out: torch.Tensor, tol: float = 2e-5) -> None:
    ref = reference.paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, 0)
    n = batch.num_real_tokens()
    torch.testing.assert_close(out[:n], ref[:n], atol=tol, rtol=tol)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 4, 5])
def test_mixed_batch_matches_reference(group: int, block_size: int) -> None:
    batch = make_paged_batch(MIXED, 2 * group, 2, 32, block_size, device=DEVICE)
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    _assert_matches_reference(batch, out)


@pytest.mark.parametrize("head_dim", [16, 64, 256])
def test_head_dims_the_launcher_accepts_match_reference(head_dim: int) -> None:
    """check_inputs takes any power-of-two head_dim in [16, 256]; the ends of that range too (256
    takes the narrower tiles of the register budget)."""
    batch = make_paged_batch(MIXED, 8, 2, head_dim, 16, device=DEVICE)
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    # Scores grow as sqrt(head_dim), and their fp32 rounding with them: on the H200 one element
    # of one (then unseeded) draw at 256 was 2.36e-5 off, over a flat 2e-5.
    _assert_matches_reference(batch, out, 2e-5 * max(1.0, (head_dim / 32) ** 0.5))


@pytest.mark.parametrize(
    ("group", "config"),
    [
        (4, AttentionConfig(block_m=16, block_n=16, num_splits=3, num_warps=4, num_stages=2)),
        # More splits than key tiles: the empty splits must merge as nothing.
        (4, AttentionConfig(block_m=64, block_n=32, num_splits=9, num_warps=4, num_stages=2)),
        # Tiles of 64 tokens over 16-key steps: a split can hold no key that a row may see.
        (1, AttentionConfig(block_m=64, block_n=16, num_splits=4, num_warps=4, num_stages=2)),
    ],
)
def test_split_k_matches_reference(group: int, config: AttentionConfig) -> None:
    batch = make_paged_batch([*MIXED, (90, 80)], 2 * group, 2, 32, 16, device=DEVICE)
    out = paged_attention_with_config(*batch.tensors(), SCALE, batch.max_seqlen_q, config)
    _assert_matches_reference(batch, out)


@pytest.mark.parametrize("group", [1, 5])
def test_decode_and_verify_one_tile_per_sequence(group: int) -> None:
    """max_seqlen_q * group fits one row tile: one program per sequence, no tile search."""
    batch = make_paged_batch([(45, 3), (70, 1), (33, 2), (16, 0)], 2 * group, 2, 32, 16,
                             device=DEVICE)  # fmt: skip
    config = choose_config(4, 2, group, 32, 3, 70, torch.float32, torch.device(DEVICE))
    assert 3 * group <= config.block_m
    out = paged_attention(*batch.tensors(), SCALE, 3, batch.max_seqlen_k)
    _assert_matches_reference(batch, out)


def test_long_decode_picks_split_k_and_matches_reference() -> None:
    seqs = [(700, 1), (333, 1)]
    batch = make_paged_batch(seqs, 4, 1, 64, 16, device=DEVICE)
    config = choose_config(2, 1, 4, 64, 1, 700, torch.float32, torch.device(DEVICE))
    assert config.num_splits > 1
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    _assert_matches_reference(batch, out)


@pytest.mark.parametrize("chunks", [None, 0, 1, 3])
@pytest.mark.parametrize(("block_n", "block_size"), [(16, 16), (32, 16), (16, 32)])
def test_decode_split_loops_match_reference(
    block_n: int, block_size: int, chunks: int | None
) -> None:
    """A split's keys in two loops (the unmasked tiles, then the masked tail: None) or in one
    with every tile masked, the block ids loaded a tile ahead (0) or a chunk's at once: the
    whole split's (1, as the rule sets it) or a third of it at a time (3, as small blocks or
    hints that under-estimate make it). Lengths that end inside a tile, on a tile edge, and
    inside the first split, each split holding several tiles; a decode and a 3-token
    verification. Blocks of 32 keys under 16-key tiles start splits inside a block."""
    batch = make_paged_batch([(700, 1), (333, 1), (256, 1), (30, 1), (95, 3)], 8, 2, 32,
                             block_size, device=DEVICE)  # fmt: skip
    split_tiles = triton.cdiv(triton.cdiv(700, block_n), 5)
    chunk_keys = triton.cdiv(split_tiles, chunks) * block_n if chunks else 0
    one_pass = chunks is not None
    config = AttentionConfig(16, block_n, 5, 4, 3, one_pass=one_pass, ids_chunk_keys=chunk_keys)
    out = paged_attention_with_config(*batch.tensors(), SCALE, 3, config)
    _assert_matches_reference(batch, out)


def test_one_pass_over_small_blocks_takes_several_chunks() -> None:
    """Blocks of 2 keys: the launcher holds at most 256 block ids a chunk, so a 720-key chunk
    (one split of a 700-key decode) runs as two of 496 and 224 keys."""
    batch = make_paged_batch([(700, 1), (41, 1)], 8, 2, 32, 2, device=DEVICE)
    config = AttentionConfig(16, 16, 1, 4, 3, one_pass=True, ids_chunk_keys=720)
    out = paged_attention_with_config(*batch.tensors(), SCALE, 1, config)
    _assert_matches_reference(batch, out)


def test_chunk_over_long_context_splits_keys_and_matches_reference() -> None:
    """Chunked prefill beside decodes: a few row tiles facing thousands of cached keys split
    those keys; the partial states of multi-row tiles, causal within the chunk, merge exactly."""
    seqs = [(2100, 40), (300, 1), (65, 1)]
    batch = make_paged_batch(seqs, 2, 1, 32, 16, device=DEVICE)
    config = choose_config(3, 1, 2, 32, 40, 2100, torch.float32, torch.device(DEVICE),
                           num_tokens=42)  # fmt: skip
    assert config.block_m == 64 and config.num_splits > 1
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    _assert_matches_reference(batch, out)


def test_overestimated_hints_and_padding_tokens() -> None:
    """CUDA graphs replay with fixed upper-bound hints and padded token rows."""
    batch = make_paged_batch([(40, 1), (17, 1), (90, 2)], 4, 2, 32, 16, device=DEVICE)
    padded = torch.cat([batch.query, torch.randn_like(batch.query[:3])])
    args = (padded, *batch.tensors()[1:])
    out = paged_attention(*args, SCALE, 256, 8192)
    _assert_matches_reference(batch, out)
    # These hints split the keys (a few tiles, a long context): the merge writes padding as 0.
    assert torch.all(out[batch.num_real_tokens() :] == 0)


@interpreter_only
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [4, 5])
def test_prefill_tiles_read_new_keys_from_the_step_kv(group: int, block_size: int) -> None:
    """With this step's K/V passed, prefill tiles take the new tokens' keys from them (TMA on
    the GPU): poisoned cache rows for those tokens must not show, and NaN padding rows after
    the last sequence, which its masked tile loads, must not leak into it."""
    batch = make_paged_batch([*MIXED, (90, 80)], 2 * group, 2, 32, block_size, device=DEVICE)
    ref = reference.paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, 0)
    key, value = batch.new_kv(padding=5)
    query = torch.cat([batch.query, torch.randn_like(batch.query[:5])])
    batch.poison_new_slots()
    args = (query, *batch.tensors()[1:])
    out = paged_attention(*args, SCALE, batch.max_seqlen_q, batch.max_seqlen_k, key, value)
    n = batch.num_real_tokens()
    torch.testing.assert_close(out[:n], ref[:n], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(
    "config",
    [
        AttentionConfig(block_m=64, block_n=32, num_splits=3, num_warps=4, num_stages=2),
        AttentionConfig(block_m=64, block_n=16, num_splits=9, num_warps=4, num_stages=2),
    ],
)
@interpreter_only
def test_split_prefill_over_cached_context_and_new_keys(config: AttentionConfig) -> None:
    """Splits that straddle the end of the cached context and the start of the new keys."""
    batch = make_paged_batch([(300, 45), (61, 61), (70, 1)], 8, 2, 32, 16, device=DEVICE)
    ref = reference.paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, 0)
    key, value = batch.new_kv()
    batch.poison_new_slots()
    out = paged_attention_with_config(
        *batch.tensors(), SCALE, batch.max_seqlen_q, config, key, value
    )
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_new_kv_are_ignored_where_tma_cannot_read_them() -> None:
    """Decode launches (one tile a sequence) and K/V with unusable strides read the cache."""
    batch = make_paged_batch([(45, 3), (70, 1)], 8, 2, 32, 16, device=DEVICE)
    garbage = torch.randn_like(batch.new_kv()[0])
    out = paged_attention(*batch.tensors(), SCALE, 3, batch.max_seqlen_k, garbage, garbage)
    _assert_matches_reference(batch, out)
    batch = make_paged_batch([(90, 80)], 8, 2, 32, 16, device=DEVICE)
    strided = torch.randn(80, 2, 64, device=DEVICE)[..., ::2]  # head_dim not contiguous
    out = paged_attention(*batch.tensors(), SCALE, 80, 90, strided, strided)
    _assert_matches_reference(batch, out)


def test_pdl_changes_no_output() -> None:
    """`pdl=True` changes when the kernels start (Hopper on; elsewhere, the CPU interpreter
    included, nothing at all), never what they compute: split-K decode, a prefill, padding."""
    batch = make_paged_batch([(300, 1), (77, 20), (40, 0)], 8, 2, 32, 16, device=DEVICE)
    args = (*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    assert torch.equal(paged_attention(*args, pdl=True), paged_attention(*args))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: {"query": b.query[..., :24].contiguous()}, "head_dim"),
        (lambda b: {"query": b.query.double()}, "dtype"),
        (lambda b: {"query": b.query[:, :3]}, "multiple of num_kv_heads"),
        (lambda b: {"block_tables": b.block_tables.long()}, "block_tables must be int32"),
        (lambda b: {"cu_seqlens_q": b.cu_seqlens_q[:-1]}, "cu_seqlens_q"),
        (lambda b: {"k_cache": b.k_cache.transpose(0, 1)}, "k/v caches"),
    ],
)
def test_rejects_bad_inputs(change, message: str) -> None:
    batch = make_paged_batch([(20, 3)], 4, 2, 32, 16, device=DEVICE)
    args = dict(zip(["query", "k_cache", "v_cache", "block_tables", "seq_lens", "cu_seqlens_q"],
                    batch.tensors(), strict=True))  # fmt: skip
    args.update(change(batch))
    with pytest.raises(ValueError, match=message):
        paged_attention(**args, scale=SCALE, max_seqlen_q=3, max_seqlen_k=20)


@pytest.mark.parametrize("apart", [True, False], ids=["decode-launch", "one-launch"])
@pytest.mark.parametrize("group", [4, 5])
def test_decodes_beside_a_prefill_match_reference_in_one_launch_or_two(
    group: int, apart: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many decoding sequences beside a prefill and a chunk: with DECODE_TILES_APART they run
    in a decode launch of their own after the prefill tiles' launch, which skips them."""
    monkeypatch.setattr(paged_attention_module, "DECODE_TILES_APART", apart)
    launches = _count_launches(monkeypatch)
    seqs = [(37, 37), *[(30 + 7 * i, 1) for i in range(10)], (53, 19), (20, 0)]
    batch = make_paged_batch(seqs, 2 * group, 2, 32, 16, device=DEVICE)
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    _assert_matches_reference(batch, out)
    modes = [seqs for _, seqs in launches]
    if apart:
        assert modes == [paged_attention_module.SEVERAL_TOKENS, paged_attention_module.ONE_TOKEN]
        assert launches[1][0].num_splits == 1 and launches[1][0].block_m <= 32
    else:
        assert modes == [paged_attention_module.ALL_SEQS]


def test_decodes_too_few_to_fill_the_gpu_twice_stay_in_the_prefill_launch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under DECODE_APART_MIN_WAVES programs a multiprocessor (of INTERPRETER_NUM_SMS, 4, as
    _count_launches pins them), the decoding sequences stay in the one launch."""
    launches = _count_launches(monkeypatch)
    batch = make_paged_batch([(300, 1), (45, 1), (77, 20)], 4, 2, 32, 16, device=DEVICE)
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    _assert_matches_reference(batch, out)
    assert [seqs for _, seqs in launches] == [paged_attention_module.ALL_SEQS]


def test_decodes_apart_from_a_split_prefill_launch_and_padding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CUDA graph's hints split the prefill launch's keys: its merge writes every row (empty
    partials for the decoding sequences, padding as 0), and the decode launch after it writes
    the decoding rows."""
    launches = _count_launches(monkeypatch)
    batch = make_paged_batch([(40, 1), (17, 1), (33, 1), (60, 1), (90, 2)], 4, 2, 32, 16,
                             device=DEVICE)  # fmt: skip
    padded = torch.cat([batch.query, torch.randn_like(batch.query[:3])])
    out = paged_attention(padded, *batch.tensors()[1:], SCALE, 256, 8192)
    _assert_matches_reference(batch, out)
    assert torch.all(out[batch.num_real_tokens() :] == 0)
    (prefill, first), (_, second) = launches
    assert prefill.num_splits > 1
    assert (first, second) == (paged_attention_module.SEVERAL_TOKENS,
                               paged_attention_module.ONE_TOKEN)  # fmt: skip


def _count_launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[AttentionConfig, int]]:
    """(configuration, SEQS) of each kernel launch from now on. The decode-launch rule counts
    INTERPRETER_NUM_SMS multiprocessors on every device, so that these small batches cross its
    floor on a GPU as they do on the CPU."""
    monkeypatch.setattr(paged_attention_module, "device_limits",
                        lambda device: (INTERPRETER_NUM_SMS, device_limits(device)[1]))  # fmt: skip
    launches: list[tuple[AttentionConfig, int]] = []
    launch = paged_attention_module._launch_kernel

    def spy(t: Any, options: Any, config: AttentionConfig, max_seqlen_q: int, seqs: int) -> None:
        launches.append((config, seqs))
        launch(t, options, config, max_seqlen_q, seqs)

    monkeypatch.setattr(paged_attention_module, "_launch_kernel", spy)
    return launches
