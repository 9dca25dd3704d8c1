"""FP8 (e4m3) KV caches on CUDA: store_kv's bytes, and every attention path against the oracle
(the cache dequantized to fp32, then attention), at the sizes and configurations the engine
launches: 16-bit queries, head_dim 64/128, GQA, long contexts, split-K, one-pass walks,
prefill tiles, CUDA graphs and programmatic dependent launch."""

import pytest
import torch

from llm_worker.kernels import reference
from llm_worker.kernels.attention_config import AttentionConfig
from llm_worker.kernels.paged_attention import paged_attention, paged_attention_with_config
from llm_worker.kernels.pdl import pdl_device
from llm_worker.kernels.store_kv import store_kv
from tests.kernels.paged_cases import GPU_CONFIGS, PagedBatch, fp8_batch, make_paged_batch

pytestmark = pytest.mark.gpu

MIXED = [(777, 777), (2100, 300), (4099, 1), (1234, 5), (50, 0), (3000, 1), (16, 16)]
DECODE = [(4099, 1), (1234, 1), (16, 1), (31000, 1), (9000, 4)]
SCALE = 0.09
K_SCALE, V_SCALE = 0.04, 0.01  # K/V are N(0, 1): inside e4m3's normal range after the scales


def _batch(seqs: list, group: int, head_dim: int, dtype: torch.dtype, block_size: int = 16):
    full = make_paged_batch(seqs, 2 * group, 2, head_dim, block_size, dtype, "cuda")
    return full, fp8_batch(full, K_SCALE, V_SCALE)


def _oracle(batch: PagedBatch) -> torch.Tensor:
    query = batch.query.float()
    args = (query, *batch.tensors()[1:], SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    return reference.paged_attention(*args, k_scale=K_SCALE, v_scale=V_SCALE)


def _relative_error(out: torch.Tensor, batch: PagedBatch, ref: torch.Tensor) -> float:
    n = batch.num_real_tokens()
    assert not out[:n].isnan().any()
    return float((out[:n].float() - ref[:n]).norm() / ref[:n].norm())


def test_store_kv_bytes_match_the_reference_on_cuda() -> None:
    num_tokens, num_kv_heads, head_dim = 300, 8, 128
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        key = (torch.randn(num_tokens, num_kv_heads, head_dim, device="cuda") * 3).to(dtype)
        value = torch.randn(num_tokens, num_kv_heads, head_dim, device="cuda").to(dtype)
        slots = torch.randperm(64 * 16, device="cuda")[:num_tokens]
        slots[::7] = -1
        shape = (64, 16, num_kv_heads, head_dim)
        k_cache = torch.zeros(shape, dtype=torch.float8_e4m3fn, device="cuda")
        v_cache = torch.zeros_like(k_cache)
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        scales = {"k_scale": K_SCALE, "v_scale": V_SCALE}
        reference.store_kv(key, value, k_ref, v_ref, slots, **scales)
        store_kv(key, value, k_cache, v_cache, slots, **scales)
        assert torch.equal(k_cache.view(torch.uint8), k_ref.view(torch.uint8))
        assert torch.equal(v_cache.view(torch.uint8), v_ref.view(torch.uint8))


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matrix_reads_fp8(dtype: torch.dtype, head_dim: int, group: int) -> None:
    for seqs in (MIXED, DECODE):
        full, batch = _batch(seqs, group, head_dim, dtype, 16 if group % 2 else 32)
        out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k,
                              k_scale=K_SCALE, v_scale=V_SCALE)  # fmt: skip
        assert _relative_error(out, batch, _oracle(batch)) < 1e-2
        # And e4m3 stays near the unquantized cache.
        exact = reference.paged_attention(
            full.query.float(), full.k_cache.float(), full.v_cache.float(),
            *full.tensors()[3:], SCALE, full.max_seqlen_q, full.max_seqlen_k,
        )  # fmt: skip
        assert _relative_error(out, batch, exact) < 6e-2


@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_explicit_configs_read_fp8(config: AttentionConfig) -> None:
    _, batch = _batch(MIXED, 4, 128, torch.bfloat16)
    out = paged_attention_with_config(*batch.tensors(), SCALE, batch.max_seqlen_q, config,
                                      k_scale=K_SCALE, v_scale=V_SCALE)  # fmt: skip
    assert _relative_error(out, batch, _oracle(batch)) < 1e-2


def test_prefill_never_reads_the_step_kv_by_tma_over_an_fp8_cache() -> None:
    """Where a bf16 cache's prefill tiles take this step's keys from its K/V by TMA, an FP8
    cache's take the stored rows: garbage passed as the step's K/V must not show."""
    _, batch = _batch(MIXED, 4, 128, torch.bfloat16)
    garbage = torch.full((batch.query.shape[0], 2, 128), 1e4, dtype=torch.bfloat16, device="cuda")
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k,
                          garbage, garbage, k_scale=K_SCALE, v_scale=V_SCALE)  # fmt: skip
    assert _relative_error(out, batch, _oracle(batch)) < 1e-2


def test_cuda_graph_replay_and_pdl_over_fp8() -> None:
    _, batch = _batch([(3000, 1), (40, 1), (700, 1), (1500, 1)], 4, 128, torch.bfloat16)
    args = batch.tensors()
    scales = {"k_scale": K_SCALE, "v_scale": V_SCALE}
    pdl = pdl_device(torch.device("cuda"))
    paged_attention(*args, SCALE, 1, 4096, pdl=pdl, **scales)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_attention(*args, SCALE, 1, 4096, pdl=pdl, **scales)
    batch.seq_lens.copy_(torch.tensor([2999, 33, 640, 1], dtype=torch.int32))
    batch.query.normal_()
    graph.replay()
    assert _relative_error(out, batch, _oracle(batch)) < 1e-2
