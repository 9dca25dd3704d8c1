"""FP8 (e4m3) KV caches: every attention path against the oracle, which dequantizes the cache
and then attends (CPU interpreter, fp32 queries, small sizes; test_fp8_kv_gpu.py on CUDA)."""

import dataclasses

import pytest
import torch

from llm_worker.kernels import paged_attention as paged_attention_module
from llm_worker.kernels import reference
from llm_worker.kernels.attention_config import AttentionConfig
from llm_worker.kernels.paged_attention import paged_attention, paged_attention_with_config
from llm_worker.models import torch_attention
from tests.kernels.paged_cases import PagedBatch, fp8_batch, make_paged_batch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MIXED = [(37, 37), (53, 19), (70, 1), (45, 4), (20, 0), (32, 1)]
SCALE = 0.37
# K and V are N(0, 1): these keep them inside e4m3's normal range, as a checkpoint's would.
K_SCALE, V_SCALE = 0.05, 0.02


def _oracle(batch: PagedBatch, k_scale: float = K_SCALE, v_scale: float = V_SCALE):
    return reference.paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, 0,
                                     k_scale=k_scale, v_scale=v_scale)  # fmt: skip


def _assert_close(batch: PagedBatch, out: torch.Tensor, expected: torch.Tensor) -> None:
    n = batch.num_real_tokens()
    torch.testing.assert_close(out[:n], expected[:n], atol=5e-5, rtol=5e-5)


def test_oracle_stays_near_full_precision_and_scales_matter() -> None:
    """The oracle's FP8 attention is full precision within e4m3's rounding, and only with the
    scales applied: without them the output is off by far more."""
    full = make_paged_batch(MIXED, 8, 2, 32, 16, device=DEVICE)
    exact = reference.paged_attention(*full.tensors(), SCALE, full.max_seqlen_q, 0)
    batch = fp8_batch(full, K_SCALE, V_SCALE)
    n = batch.num_real_tokens()
    error = (_oracle(batch)[:n] - exact[:n]).norm() / exact[:n].norm()
    assert error < 0.05
    unscaled = _oracle(batch, 1.0, 1.0)[:n]
    assert (unscaled - exact[:n]).norm() / exact[:n].norm() > 0.5


@pytest.mark.parametrize("group", [1, 4, 5])
def test_mixed_batch_reads_fp8(group: int) -> None:
    """Prefill, a chunk over a cached prefix, decode, verification, an empty and an aligned one."""
    batch = fp8_batch(make_paged_batch(MIXED, 2 * group, 2, 32, 16, device=DEVICE),
                      K_SCALE, V_SCALE)  # fmt: skip
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k,
                          k_scale=K_SCALE, v_scale=V_SCALE)  # fmt: skip
    _assert_close(batch, out, _oracle(batch))


@pytest.mark.parametrize(
    "config",
    [
        # Split-K with two loops (unmasked tiles, then the masked tail) over decode rows.
        AttentionConfig(block_m=16, block_n=16, num_splits=3, num_warps=4, num_stages=2),
        # One masked loop, block ids a tile ahead; then a split's ids at once.
        AttentionConfig(16, 16, 5, 4, 3, one_pass=True),
        AttentionConfig(16, 16, 5, 4, 3, one_pass=True, ids_chunk_keys=48),
        # Prefill tiles split over a long cached context (chunked prefill).
        AttentionConfig(block_m=64, block_n=32, num_splits=3, num_warps=4, num_stages=2),
    ],
)
def test_split_and_one_pass_walks_read_fp8(config: AttentionConfig) -> None:
    batch = fp8_batch(make_paged_batch([(300, 45), (700, 1), (95, 3), (30, 1)], 8, 2, 32, 16,
                                       device=DEVICE), K_SCALE, V_SCALE)  # fmt: skip
    out = paged_attention_with_config(*batch.tensors(), SCALE, batch.max_seqlen_q, config,
                                      k_scale=K_SCALE, v_scale=V_SCALE)  # fmt: skip
    _assert_close(batch, out, _oracle(batch))


def test_prefill_reads_this_steps_keys_from_the_fp8_cache_not_the_step_kv() -> None:
    """Where a 16-bit cache's prefill tiles read the step's own K/V (TMA), an FP8 cache's read
    the stored rows: attention sees what every later step and prefix hit will. Garbage passed
    as the step's K/V must not show."""
    batch = fp8_batch(make_paged_batch([*MIXED, (90, 80)], 8, 2, 32, 16, device=DEVICE),
                      K_SCALE, V_SCALE)  # fmt: skip
    garbage = torch.randn(batch.query.shape[0], 2, 32, device=DEVICE) * 100
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k,
                          garbage, garbage, k_scale=K_SCALE, v_scale=V_SCALE)  # fmt: skip
    _assert_close(batch, out, _oracle(batch))


def _bf16_query_error(batch: PagedBatch, monkeypatch, dot_f16: bool) -> float:
    monkeypatch.setattr(paged_attention_module, "FP8_DOT_F16", dot_f16)
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k,
                          k_scale=K_SCALE, v_scale=V_SCALE)  # fmt: skip
    query = batch.query.float()
    args = (query, *batch.tensors()[1:], SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    expected = reference.paged_attention(*args, k_scale=K_SCALE, v_scale=V_SCALE)
    n = batch.num_real_tokens()
    assert not out[:n].isnan().any()
    return float((out[:n].float() - expected[:n]).norm() / expected[:n].norm())


@pytest.mark.parametrize("query_magnitude", [1.0, 3e4])
def test_bf16_queries_multiply_in_fp16_at_least_as_closely(monkeypatch, query_magnitude) -> None:
    """Under a bf16 query an FP8 cache's products run in fp16 (FP8_DOT_F16), the query scaled by
    the softmax scale first, so one past fp16's range (65,504) before scaling still fits: the
    output stays as close to the fp32 oracle as with products in bf16."""
    full = make_paged_batch(MIXED, 8, 2, 32, 16, torch.bfloat16, DEVICE)
    full = dataclasses.replace(full, query=full.query * query_magnitude)
    batch = fp8_batch(full, K_SCALE, V_SCALE)
    in_fp16 = _bf16_query_error(batch, monkeypatch, dot_f16=True)
    in_bf16 = _bf16_query_error(batch, monkeypatch, dot_f16=False)
    assert in_fp16 < 0.01
    assert in_fp16 <= in_bf16 * 1.05


@pytest.mark.parametrize("block_size", [4, 16])
def test_torch_backend_reads_fp8(block_size: int) -> None:
    """Batched short queries and the per-sequence path for long ones, over the same FP8 cache."""
    seqs = [(1, 1), (37, 1), (20, 5), (64, 32), (70, 33), (16, 3)]
    full = make_paged_batch(seqs, 6, 2, 32, block_size)
    # The engine's cache is zero-initialised: blocks past a context hold numbers, never NaN.
    full = dataclasses.replace(full, k_cache=full.k_cache.nan_to_num(0.0),
                               v_cache=full.v_cache.nan_to_num(0.0))  # fmt: skip
    batch = fp8_batch(full, K_SCALE, V_SCALE)
    args = (*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    expected = reference.paged_attention(*args, k_scale=K_SCALE, v_scale=V_SCALE)
    got = torch_attention.paged_attention(*args, k_scale=K_SCALE, v_scale=V_SCALE)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_scales_on_a_16_bit_cache_are_refused() -> None:
    batch = make_paged_batch([(20, 3)], 4, 2, 32, 16, device=DEVICE)
    with pytest.raises(ValueError, match="1 unless the cache is FP8"):
        paged_attention(*batch.tensors(), SCALE, 3, 20, k_scale=0.5)
    fp8 = fp8_batch(batch, 1.0, 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        paged_attention(*fp8.tensors(), SCALE, 3, 20, v_scale=0.0)
