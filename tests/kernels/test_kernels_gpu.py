"""The full matrix on CUDA: 16-bit dtypes, head_dim 64/128/256, long contexts, split-K, CUDA
graphs, programmatic dependent launch and a cache past 2^31 elements. The reference runs in fp32
on upcast copies of the same inputs."""

from collections.abc import Callable

import pytest
import torch

from llm_worker.kernels import reference
from llm_worker.kernels.attention_config import GATHER_SHORT_TILE, AttentionConfig, choose_config
from llm_worker.kernels.paged_attention import paged_attention, paged_attention_with_config
from llm_worker.kernels.pdl import pdl_device
from llm_worker.kernels.rotary import rotary_embedding
from llm_worker.kernels.store_kv import store_kv
from llm_worker.models.layers import rotary_cos_sin_cache
from tests.kernels.paged_cases import GPU_CONFIGS, PagedBatch, make_paged_batch

pytestmark = pytest.mark.gpu

MIXED = [(777, 777), (2100, 300), (4099, 1), (1234, 5), (50, 0), (3000, 1), (16, 16)]
DECODE = [(4099, 1), (1234, 1), (16, 1), (31000, 1), (9000, 4)]
SCALE = 0.09


def _reference(batch: PagedBatch) -> torch.Tensor:
    upcast = [t.float() if t.is_floating_point() else t for t in batch.tensors()]
    return reference.paged_attention(*upcast, SCALE, batch.max_seqlen_q, batch.max_seqlen_k)


def _relative_error(out: torch.Tensor, batch: PagedBatch, ref: torch.Tensor | None = None) -> float:
    ref = _reference(batch) if ref is None else ref
    n = batch.num_real_tokens()
    assert not out[:n].isnan().any()
    return float((out[:n].float() - ref[:n]).norm() / ref[:n].norm())


@pytest.mark.parametrize("group", [1, 4, 5, 8])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matrix_matches_reference(dtype: torch.dtype, head_dim: int, group: int) -> None:
    block_size = 16 if group % 2 else 32
    for seqs in (MIXED, DECODE):
        batch = make_paged_batch(seqs, 2 * group, 2, head_dim, block_size, dtype, "cuda")
        out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
        assert _relative_error(out, batch) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


@pytest.mark.parametrize("config", GPU_CONFIGS)
def test_explicit_configs_match_reference(config: AttentionConfig) -> None:
    batch = make_paged_batch(MIXED, 32, 8, 128, 16, torch.bfloat16, "cuda")
    out = paged_attention_with_config(*batch.tensors(), SCALE, batch.max_seqlen_q, config)
    assert _relative_error(out, batch) < 1e-2


@pytest.mark.parametrize(
    "config",
    [
        AttentionConfig(block_m=128, block_n=128, num_splits=1, num_warps=8, num_stages=3),
        AttentionConfig(block_m=128, block_n=64, num_splits=3, num_warps=8, num_stages=3),
        AttentionConfig(block_m=64, block_n=64, num_splits=1, num_warps=4, num_stages=2),
        AttentionConfig(64, 32, 1, 4, 3, max_registers=168),
    ],
)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_new_keys_by_tma_match_reference(
    dtype: torch.dtype, head_dim: int, config: AttentionConfig
) -> None:
    """Prefill tiles read this step's keys from its K/V by TMA: the new tokens' cache rows are
    NaN, and so are 7 padding rows after the last token, and nothing of either may show."""
    batch = make_paged_batch(MIXED, 32, 8, head_dim, 16, dtype, "cuda")
    ref = _reference(batch)
    key, value = batch.new_kv(padding=7)
    query = torch.cat([batch.query, torch.randn_like(batch.query[:7])])
    batch.poison_new_slots()
    args = (query, *batch.tensors()[1:])
    out = paged_attention_with_config(*args, SCALE, batch.max_seqlen_q, config, key, value)
    assert _relative_error(out, batch, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_more_sequences_than_one_search_chunk() -> None:
    """300 short prefills (tile slots past the 256 sequences one vector load covers)."""
    seqs = [(40 + i % 7, 20 + i % 5) for i in range(300)]
    batch = make_paged_batch(seqs, 8, 2, 64, 16, torch.bfloat16, "cuda")
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    assert _relative_error(out, batch) < 1e-2


def test_prefix_hits_on_the_rules_tile_match_reference() -> None:
    """Prompts over a prefix-cache hit with enough tiles to fill the GPU: the rules pick the
    register-capped 32-key tile for them (two programs a multiprocessor), and it stays exact."""
    seqs = [(300 + 37 * (i % 5), 60 + 7 * (i % 3)) for i in range(48)]
    batch = make_paged_batch(seqs, 32, 8, 128, 16, torch.bfloat16, "cuda")
    hints = (batch.max_seqlen_q, batch.max_seqlen_k, torch.bfloat16, torch.device("cuda"))
    config = choose_config(len(seqs), 8, 4, 128, *hints, num_tokens=batch.query.shape[0])
    tile = (config.block_m, config.block_n, config.max_registers, config.step_kv)
    assert tile == (128, 32, GATHER_SHORT_TILE[4], False)
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    assert _relative_error(out, batch) < 1e-2


def test_fp32_matches_reference_tightly() -> None:
    batch = make_paged_batch(MIXED, 8, 2, 64, 16, torch.float32, "cuda")
    out = paged_attention(*batch.tensors(), SCALE, batch.max_seqlen_q, batch.max_seqlen_k)
    assert _relative_error(out, batch) < 1e-5


def test_cuda_graph_replay_with_fixed_hints() -> None:
    batch = make_paged_batch([(3000, 1), (40, 1), (700, 1), (1500, 1)], 16, 4, 128, 16,
                             torch.bfloat16, "cuda")  # fmt: skip
    args = batch.tensors()
    paged_attention(*args, SCALE, 1, 4096)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_attention(*args, SCALE, 1, 4096)
    batch.seq_lens.copy_(torch.tensor([2999, 33, 640, 1], dtype=torch.int32))
    batch.query.normal_()
    graph.replay()
    assert _relative_error(out, batch) < 1e-2


@pytest.mark.parametrize("seqs", [DECODE, MIXED, [(4096, 1)]], ids=["decode", "mixed", "1x4k"])
def test_programmatic_dependent_launch_sees_the_kernel_before(seqs: list) -> None:
    """Attention launched as a programmatic dependent of `store_kv` starts before the store
    ends: each layer's new rows, NaN in the cache until the store, must show in its output
    (split-K merges too), replayed from a graph as the engine runs decode."""
    if not pdl_device(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs Hopper or later")
    layers = [make_paged_batch(seqs, 32, 8, 128, 16, torch.bfloat16, "cuda") for _ in range(4)]
    refs = [_reference(batch) for batch in layers]
    new_kv = [batch.new_kv() for batch in layers]
    hints = (layers[0].max_seqlen_q, max(batch.max_seqlen_k for batch in layers))

    def step() -> list[torch.Tensor]:
        outs = []
        for batch, (key, value) in zip(layers, new_kv, strict=True):
            _, k_cache, v_cache, *_ = batch.tensors()
            store_kv(key, value, k_cache, v_cache, batch.new_slots)
            outs.append(paged_attention(*batch.tensors(), SCALE, *hints, key, value, pdl=True))
        return outs

    def poison() -> None:
        for batch in layers:
            batch.poison_new_slots()

    _replay_and_check(step, poison, layers, refs)


def _replay_and_check(
    step: Callable[[], list[torch.Tensor]],
    prepare: Callable[[], None],
    layers: list[PagedBatch],
    refs: list[torch.Tensor],
) -> None:
    """`step` captured in a CUDA graph, then three times: `prepare` (outside the graph), a
    replay, and each layer's output against its reference."""
    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for _ in range(3):
        prepare()
        graph.replay()
        torch.cuda.synchronize()
        for batch, out, ref in zip(layers, outs, refs, strict=True):
            assert _relative_error(out, batch, ref) < 1e-2


@pytest.mark.parametrize(
    "seqs",
    [[(4096, 1)], [(4099, 1), (1234, 1)], DECODE, MIXED],
    ids=["1x4k", "2_decodes", "decode", "mixed"],
)
def test_programmatic_dependent_chain_from_rotary(seqs: list) -> None:
    """rotary -> store_kv -> attention, each a programmatic dependent of the one before, as a
    decoder layer launches them, four layers replayed from a graph: attention must see the query
    and the key rotated in place and the new rows stored, which the cache holds as NaN until the
    store."""
    if not pdl_device(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs Hopper or later")
    num_heads, num_kv_heads, head_dim = 32, 8, 128
    layers = [
        make_paged_batch(seqs, num_heads, num_kv_heads, head_dim, 16, torch.bfloat16, "cuda")
        for _ in range(4)
    ]
    num_tokens = layers[0].query.shape[0]
    positions = torch.cat([torch.arange(ctx - q, ctx) for ctx, q in seqs]).cuda()
    cos_sin = rotary_cos_sin_cache(head_dim, 32768, 500000.0, None, torch.device("cuda"))
    k_end, width = num_heads + num_kv_heads, num_heads + 2 * num_kv_heads
    fresh = [torch.randn(num_tokens, width, head_dim, device="cuda").to(torch.bfloat16)
             for _ in layers]  # fmt: skip
    refs = []
    for batch, qkv in zip(layers, fresh, strict=True):
        query, key = reference.rotary_embedding(
            positions, qkv[:, :num_heads], qkv[:, num_heads:k_end], cos_sin
        )
        k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
        reference.store_kv(key, qkv[:, k_end:], k_cache, v_cache, batch.new_slots)
        tensors = (query, k_cache, v_cache, *batch.tensors()[3:])
        upcast = [t.float() if t.is_floating_point() else t for t in tensors]
        own_hints = (batch.max_seqlen_q, batch.max_seqlen_k)
        refs.append(reference.paged_attention(*upcast, SCALE, *own_hints))
    buffers = [qkv.clone() for qkv in fresh]
    hints = (layers[0].max_seqlen_q, max(batch.max_seqlen_k for batch in layers))

    def step() -> list[torch.Tensor]:
        outs = []
        for batch, qkv in zip(layers, buffers, strict=True):
            query, key, value = qkv[:, :num_heads], qkv[:, num_heads:k_end], qkv[:, k_end:]
            rotary_embedding(positions, query, key, cos_sin, pdl=True)
            store_kv(key, value, batch.k_cache, batch.v_cache, batch.new_slots, pdl=True)
            args = (query, *batch.tensors()[1:])
            outs.append(paged_attention(*args, SCALE, *hints, key, value, pdl=True))
        return outs

    def reset() -> None:
        for batch, qkv, qkv0 in zip(layers, buffers, fresh, strict=True):
            qkv.copy_(qkv0)  # rotary rotates in place: each replay starts from the same rows
            batch.poison_new_slots()

    _replay_and_check(step, reset, layers, refs)


def test_cache_past_int32_offsets() -> None:
    """bf16 caches of 2^31 + 2^18 elements each (4.3 GB); the sequence lives in the last blocks."""
    block_size, num_kv_heads, head_dim = 16, 1, 128
    num_blocks = 2**31 // (block_size * num_kv_heads * head_dim) + 128
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.empty(shape, dtype=torch.bfloat16, device="cuda")
    v_cache = torch.empty_like(k_cache)
    seqs = [(700, 700), (333, 1)]
    blocks = torch.arange(num_blocks - 88, num_blocks, dtype=torch.int32, device="cuda")
    block_tables = blocks.view(2, 44)  # 44 blocks hold 700 tokens; the second row uses 21
    positions = [torch.arange(ctx, device="cuda") for ctx, _ in seqs]
    slots = torch.cat([block_tables[i, p // block_size].long() * block_size + p % block_size
                       for i, p in enumerate(positions)])  # fmt: skip
    assert int(slots.max()) * num_kv_heads * head_dim > 2**31
    key = torch.randn(len(slots), num_kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    value = torch.randn_like(key)
    store_kv(key, value, k_cache, v_cache, slots)
    flat = k_cache.view(-1, num_kv_heads, head_dim)
    assert torch.equal(flat[slots[-1]], key[-1])
    batch = PagedBatch(
        query=torch.randn(701, 4, head_dim, device="cuda", dtype=torch.bfloat16),
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=block_tables,
        seq_lens=torch.tensor([700, 333], dtype=torch.int32, device="cuda"),
        cu_seqlens_q=torch.tensor([0, 700, 701], dtype=torch.int32, device="cuda"),
        max_seqlen_q=700,
        max_seqlen_k=700,
    )
    out = paged_attention(*batch.tensors(), SCALE, 700, 700)
    ref = reference.paged_attention(*batch.tensors(), SCALE, 700, 700)
    assert float((out.float() - ref.float()).norm() / ref.float().norm()) < 1e-2
