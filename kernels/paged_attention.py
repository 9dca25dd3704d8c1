"""Paged attention for variable-length queries over a paged KV cache (Triton).

One kernel serves prefill, chunked prefill over a cached prefix, decode and verification of draft
tokens, mixed in one launch. A program owns one query tile of one sequence, one KV head and one
split of the key range:

- GQA: the `GROUP` query heads that share a KV head are flattened with the query tokens into the
  rows of one tile (row = token * GROUP + head_in_group), so each K/V tile is read once per KV head
  and feeds a single matrix product, whatever the group size (5 included).
- Tiles are found without a host-side table: sequence i owns grid slots starting at
  `cu_seqlens_q[i] * GROUP // BLOCK_M + i`, which leaves room for all of its
  ceil(q_len * GROUP / BLOCK_M) tiles; a program finds its sequence by counting the sequences
  that start at or before its slot, and spare slots exit.
  The grid then depends only on num_tokens and num_seqs, so CUDA graphs can capture it.
- Split-K (flash-decoding): with few programs and long contexts, each sequence's keys are cut into
  num_splits contiguous ranges (sized at run time from the actual length) whose partial softmax
  states are merged by `_merge_splits_kernel`.
- Causality: key tiles that every row of the tile may see run without masks; only the tail
  tiles pay for the causal and length masks, in a second loop. Split decode tiles of up to
  2,048 keys a split (`AttentionConfig.one_pass`) walk their keys in one loop with every tile
  masked instead: the second loop costs every program its tail's block-id load and the
  pipeline's set-up and drain around it, even when its range is empty, which is worth more
  than the masks there.
- K/V tiles are gathered key by key through the block table (any block size); the next tile's
  block ids are loaded an iteration ahead so Triton's software pipeline keeps num_stages - 1
  K/V tiles in flight (`kernels.attention_tile.attend_kv_range`). One-pass tiles over long
  splits (`AttentionConfig.ids_chunk_keys`) load the block ids of the whole split at once
  instead, before the loop, and take each tile's from them (`attend_kv_split`).

- Programmatic dependent launch (`pdl`, `kernels.pdl`): the program reads the step's metadata
  and its first key tile's block ids, then waits for the kernel before it (store_kv in the
  engine) and only then reads the query and the cache. With split-K the merge launches as soon
  as every attention program has started and waits for them to finish before it reads their
  partials.

All offsets into the cache are int64, so caches over 2^31 elements work.
"""

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_worker.kernels.attention_config import (
    AttentionConfig,
    check_inputs,
    choose_config,
    device_limits,
)
from llm_worker.kernels.attention_tile import (
    attend_kv_range,
    attend_kv_split,
    attend_new_keys,
    find_sequence,
    range_block_ids,
    store_tile,
    tile_block_ids,
)
from llm_worker.kernels.merge_splits import merge_splits
from llm_worker.kernels.pdl import launch_options, pdl_device
from llm_worker.kernels.reference import FP8_KV_DTYPES, check_kv_scales

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton < 3.4: every key comes from the cache
    TensorDescriptor = None

# The most block ids a one-pass tile holds at once (`AttentionConfig.ids_chunk_keys`): the
# rule's longest split (2,048 keys) in one chunk down to blocks of 16 keys.
MAX_CHUNK_BLOCKS = 256
# Prefill tiles read this step's own keys by TMA when the caller passes them (Hopper and later;
# the CPU interpreter too, so CI runs the path). False: every key through the block table.
NEW_KV_TMA = True
# An FP8 cache under a bf16 (or fp16) query multiplies in fp16, the query scaled by the softmax
# scale first: e4m3 converts to fp16 in one instruction for two values and to bf16 only through
# a further conversion per value, which decode over an FP8 cache pays in speed
# (docs/benchmarks.md, "Decode over an FP8 (e4m3) cache"). fp16 holds every e4m3 value exactly,
# and the probabilities and the scaled query with more mantissa than bf16; only a scaled query
# past fp16's range (65,504; unscaled, about 740,000 at head_dim 128) would not fit. False:
# products in the query's dtype (sweeps).
FP8_DOT_F16 = True
# A step whose prefill tiles (128 rows) sit beside many decoding sequences computes those
# sequences apart, in a decode launch of their own (one program per sequence and KV head, tiles
# of a few rows) after the prefill launch, whose programs skip them: in one launch each decoding
# sequence takes a whole prefill tile, with its query in a few of the rows and the matrix
# products paying for all of them. Only where the decode launch has at least
# DECODE_APART_MIN_WAVES programs a multiprocessor unsplit, so it writes its rows directly: with
# fewer (17 sequences of 2,048 keys on an H100) the one launch was as fast or faster
# (docs/benchmarks.md, "Decodes beside a prefill"). False: one launch.
DECODE_TILES_APART = True
DECODE_APART_MIN_WAVES = 2
# The kernel's SEQS: every sequence, only those of one query token, only those of more.
ALL_SEQS, ONE_TOKEN, SEVERAL_TOKENS = 0, 1, 2
_ONE_TOKEN: tl.constexpr = tl.constexpr(ONE_TOKEN)
_SEVERAL_TOKENS: tl.constexpr = tl.constexpr(SEVERAL_TOKENS)


@triton.jit(do_not_specialize=["num_seqs", "num_tokens", "num_splits"])
def _paged_attention_kernel(
    out_ptr,  # [num_tokens, num_heads, head_dim], contiguous (written unless SPLIT_K)
    part_acc_ptr,  # [num_splits, num_tokens, num_heads, head_dim] fp32 (written if SPLIT_K)
    part_max_ptr,  # [num_splits, num_tokens, num_heads] fp32 (written if SPLIT_K)
    part_sum_ptr,  # [num_splits, num_tokens, num_heads] fp32 (written if SPLIT_K)
    query_ptr,  # [num_tokens, num_heads, head_dim], last dim contiguous
    k_new_desc,  # NEW_KV_TMA: over this step's keys [num_tokens, num_kv_heads * head_dim]
    v_new_desc,  # NEW_KV_TMA: the same over its values (else None)
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    block_tables_ptr,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens_ptr,  # [num_seqs] int32, context length including the new tokens
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    qk_scale,  # softmax scale * log2(e), times k_scale for an FP8 cache (not the softmax
    # scale with DOT_F16, where q_scale carries it)
    q_scale,  # DOT_F16: the query's factor before it is rounded to fp16 (the softmax scale)
    v_scale,  # SCALE_V: an FP8 cache's value scale, applied to the output
    num_seqs,
    num_tokens,
    num_kv_heads,
    num_splits,
    query_stride_token,
    query_stride_head,
    cache_stride_block,
    cache_stride_slot,
    block_table_stride,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_K: tl.constexpr,
    ONE_TILE_PER_SEQ: tl.constexpr,  # max_seqlen_q * GROUP <= BLOCK_M: one tile slot per sequence
    NEW_KV_TMA: tl.constexpr,  # keys of this step's tokens from k/v_new_desc, not the cache
    ONE_PASS: tl.constexpr,  # the split's keys in one loop, every key tile masked (split decode)
    CHUNK_KEYS: tl.constexpr,  # ONE_PASS: > 0 loads the block ids of this many keys at once
    CHUNK_BLOCKS: tl.constexpr,  # a power of two >= CHUNK_KEYS // BLOCK_SIZE + 2
    DOT_PRECISION: tl.constexpr,
    SCALE_V: tl.constexpr,  # an FP8 cache whose v_scale is not 1
    DOT_F16: tl.constexpr,  # an FP8 cache under a 16-bit query: products in fp16 (FP8_DOT_F16)
    PDL: tl.constexpr,  # launched as a programmatic dependent of the kernel before (sm_90+)
    SEQS: tl.constexpr,  # which sequences this launch computes: ALL_SEQS, ONE_TOKEN or SEVERAL
):
    # One flat grid, the KV head fastest: the heads of one key range run side by side (they
    # read neighbouring slices of the same cache blocks). Decode and verification (one tile per
    # sequence, all alike) run every tile's first split, then every second, ..., the faster of
    # the two orders for them. Prefill tiles run all the splits of one tile together, so a
    # chunk's long tiles, which go first, have every split at once rather than their later
    # splits dispatched behind every tile's first.
    kv_head = tl.program_id(0) % num_kv_heads
    if ONE_TILE_PER_SEQ:
        per_split = tl.num_programs(0) // num_splits
        split_idx = tl.program_id(0) // per_split
        tile_slot = tl.program_id(0) % per_split // num_kv_heads
    else:
        split_idx = tl.program_id(0) // num_kv_heads % num_splits
        tile_slot = tl.program_id(0) // num_kv_heads // num_splits
    num_heads = num_kv_heads * GROUP
    if PDL and SPLIT_K:
        # The merge may take its place on the multiprocessors now; it waits for this launch to
        # finish before it reads the partials. (Without a merge, whatever follows launches as
        # the programs end: in the engine that is a matmul, which waits for this launch anyway.)
        tl.extra.cuda.gdc_launch_dependents()
    if ONE_TILE_PER_SEQ:
        seq_idx = tile_slot
        seq_len = tl.load(seq_lens_ptr + seq_idx)
        q_start = tl.load(cu_seqlens_q_ptr + seq_idx)
        q_len = tl.load(cu_seqlens_q_ptr + seq_idx + 1) - q_start
        row_lo = seq_idx * 0
    else:
        # Last tiles first: under causal masking they hold the most keys, and starting them
        # early keeps the tail of the launch short.
        tile_idx = tl.num_programs(0) // num_splits // num_kv_heads - 1 - tile_slot
        seq_idx = find_sequence(cu_seqlens_q_ptr, num_seqs, tile_idx, GROUP, BLOCK_M, 256)
        seq_len = tl.load(seq_lens_ptr + seq_idx)
        q_start = tl.load(cu_seqlens_q_ptr + seq_idx)
        q_len = tl.load(cu_seqlens_q_ptr + seq_idx + 1) - q_start
        row_lo = (tile_idx - (q_start * GROUP // BLOCK_M + seq_idx)) * BLOCK_M
    active = row_lo < q_len * GROUP
    if SEQS == _ONE_TOKEN:
        active = active & (q_len == 1)
    elif SEQS == _SEVERAL_TOKENS and not SPLIT_K:
        active = active & (q_len > 1)
    if active:
        offs_d = tl.arange(0, HEAD_DIM)
        rows = row_lo + tl.arange(0, BLOCK_M)
        token_in_seq = rows // GROUP
        head_idx = kv_head * GROUP + rows % GROUP
        row_valid = token_in_seq < q_len
        # New token j sits at position context_start + j and sees keys up to there.
        context_start = seq_len - q_len
        key_limit = context_start + token_in_seq + 1
        last_token = tl.minimum((row_lo + BLOCK_M - 1) // GROUP, q_len - 1)
        kv_end = context_start + last_token + 1
        tiles_per_split = tl.cdiv(tl.cdiv(kv_end, BLOCK_N), num_splits)
        split_lo = split_idx * tiles_per_split * BLOCK_N
        split_hi = tl.minimum(split_lo + tiles_per_split * BLOCK_N, kv_end)
        if SEQS == _SEVERAL_TOKENS and SPLIT_K:
            # The merge writes every row, so a one-token sequence's tiles store empty partials
            # (it merges as nothing) for the decode launch that follows to overwrite.
            split_hi = tl.where(q_len > 1, split_hi, split_lo)
        k_head_ptr = k_cache_ptr + kv_head * HEAD_DIM
        v_head_ptr = v_cache_ptr + kv_head * HEAD_DIM
        block_table_ptr = block_tables_ptr + seq_idx.to(tl.int64) * block_table_stride
        # The keys every row sees in full (no mask) come first; their first tile's block ids.
        if NEW_KV_TMA:
            # The cached context [0, context_start), which every row sees (only the tile past
            # its end masks), by block-table gather; this step's own keys, causal among the
            # rows, from the step's contiguous K/V.
            cached_hi = tl.minimum(split_hi, context_start)
            full_hi = tl.maximum(split_lo, cached_hi // BLOCK_N * BLOCK_N)
        elif ONE_PASS:
            full_hi = split_hi
        else:
            unmasked_end = (context_start + row_lo // GROUP + 1) // BLOCK_N * BLOCK_N
            full_hi = tl.minimum(split_hi, unmasked_end)
        if ONE_PASS and CHUNK_KEYS > 0 and not NEW_KV_TMA:
            chunk_ids = range_block_ids(
                block_table_ptr, split_lo, tl.minimum(split_lo + CHUNK_KEYS, split_hi),
                BLOCK_SIZE, CHUNK_BLOCKS,
            )  # fmt: skip
        else:
            first_ids = tile_block_ids(block_table_ptr, split_lo, full_hi, BLOCK_SIZE, BLOCK_N)
        if PDL:
            # Everything above comes from the step's metadata, which the host wrote before the
            # step. The query, this step's keys and the cache (the kernel before may be writing
            # this step's rows) are read after the wait.
            tl.extra.cuda.gdc_wait()
        q_offs = (q_start + token_in_seq).to(tl.int64) * query_stride_token
        q_offs += head_idx * query_stride_head
        q = tl.load(
            query_ptr + q_offs[:, None] + offs_d[None, :], mask=row_valid[:, None], other=0.0
        )
        if DOT_F16:
            q = (q.to(tl.float32) * q_scale).to(tl.float16)

        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        if NEW_KV_TMA:
            if split_lo < cached_hi:
                acc, m_i, l_i = attend_kv_range(
                    acc, m_i, l_i, q, k_head_ptr, v_head_ptr, block_table_ptr, first_ids,
                    split_lo, full_hi, key_limit, qk_scale,
                    cache_stride_block, cache_stride_slot,
                    BLOCK_SIZE, BLOCK_N, HEAD_DIM, False, DOT_PRECISION,
                )  # fmt: skip
                tail_ids = tile_block_ids(block_table_ptr, full_hi, cached_hi, BLOCK_SIZE, BLOCK_N)
                acc, m_i, l_i = attend_kv_range(
                    acc, m_i, l_i, q, k_head_ptr, v_head_ptr, block_table_ptr, tail_ids,
                    full_hi, cached_hi, key_limit, qk_scale,
                    cache_stride_block, cache_stride_slot,
                    BLOCK_SIZE, BLOCK_N, HEAD_DIM, True, DOT_PRECISION,
                )  # fmt: skip
            new_lo = tl.maximum(split_lo, context_start)
            seen_by_all = context_start + row_lo // GROUP + 1
            full_keys = tl.maximum(tl.minimum(seen_by_all, split_hi) - new_lo, 0)
            new_full = new_lo + full_keys // BLOCK_N * BLOCK_N
            row_of_pos0 = q_start - context_start
            acc, m_i, l_i = attend_new_keys(
                acc, m_i, l_i, q, k_new_desc, v_new_desc, kv_head * HEAD_DIM, row_of_pos0,
                new_lo, new_full, key_limit, qk_scale, BLOCK_N, False, DOT_PRECISION,
            )  # fmt: skip
            # Only tiles whose last key tile reaches past the real tokens can load padding rows.
            if row_of_pos0 + split_hi + BLOCK_N > tl.load(cu_seqlens_q_ptr + num_seqs):
                acc, m_i, l_i = attend_new_keys(
                    acc, m_i, l_i, q, k_new_desc, v_new_desc, kv_head * HEAD_DIM, row_of_pos0,
                    new_full, split_hi, key_limit, qk_scale, BLOCK_N, True, DOT_PRECISION, True,
                )  # fmt: skip
            else:
                acc, m_i, l_i = attend_new_keys(
                    acc, m_i, l_i, q, k_new_desc, v_new_desc, kv_head * HEAD_DIM, row_of_pos0,
                    new_full, split_hi, key_limit, qk_scale, BLOCK_N, True, DOT_PRECISION,
                )  # fmt: skip
        elif ONE_PASS and CHUNK_KEYS > 0:
            # Chunks of CHUNK_KEYS keys, each chunk's block ids loaded whole before its keys (the
            # first chunk's before the wait). The rule makes a split one chunk; more are for
            # small blocks (MAX_CHUNK_BLOCKS) and for hints that under-estimate.
            for chunk_lo in range(split_lo, split_hi, CHUNK_KEYS):
                chunk_hi = tl.minimum(chunk_lo + CHUNK_KEYS, split_hi)
                acc, m_i, l_i = attend_kv_split(
                    acc, m_i, l_i, q, k_head_ptr, v_head_ptr, chunk_ids, chunk_lo // BLOCK_SIZE,
                    chunk_lo, chunk_hi, key_limit, qk_scale,
                    cache_stride_block, cache_stride_slot,
                    BLOCK_SIZE, BLOCK_N, HEAD_DIM, CHUNK_BLOCKS, DOT_PRECISION,
                )  # fmt: skip
                chunk_ids = range_block_ids(
                    block_table_ptr, chunk_hi, tl.minimum(chunk_hi + CHUNK_KEYS, split_hi),
                    BLOCK_SIZE, CHUNK_BLOCKS,
                )  # fmt: skip
        else:
            # ONE_PASS: full_hi is split_hi, and every tile of this loop is masked.
            acc, m_i, l_i = attend_kv_range(
                acc, m_i, l_i, q, k_head_ptr, v_head_ptr, block_table_ptr, first_ids,
                split_lo, full_hi, key_limit, qk_scale,
                cache_stride_block, cache_stride_slot,
                BLOCK_SIZE, BLOCK_N, HEAD_DIM, ONE_PASS, DOT_PRECISION,
            )  # fmt: skip
            if not ONE_PASS:
                tail_lo = tl.maximum(split_lo, unmasked_end)
                tail_ids = tile_block_ids(block_table_ptr, tail_lo, split_hi, BLOCK_SIZE, BLOCK_N)
                acc, m_i, l_i = attend_kv_range(
                    acc, m_i, l_i, q, k_head_ptr, v_head_ptr, block_table_ptr, tail_ids,
                    tail_lo, split_hi, key_limit, qk_scale,
                    cache_stride_block, cache_stride_slot,
                    BLOCK_SIZE, BLOCK_N, HEAD_DIM, True, DOT_PRECISION,
                )  # fmt: skip
        store_tile(
            out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, acc, m_i, l_i,
            q_start + token_in_seq, head_idx, row_valid, split_idx, num_tokens, num_heads,
            v_scale, HEAD_DIM, SPLIT_K, SCALE_V,
        )  # fmt: skip
    elif PDL:
        # A spare slot reads nothing, but waits too: the launch must not finish before the one
        # it depends on, or what follows it could overtake that one.
        tl.extra.cuda.gdc_wait()


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32, context length including the new tokens
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1] int32, offsets of each sequence's new tokens
    scale: float,
    max_seqlen_q: int,  # upper bounds (never under-estimates): pick the grid, tiles and split-K
    max_seqlen_k: int,
    key: torch.Tensor | None = None,  # [num_tokens, num_kv_heads, head_dim], as stored this step
    value: torch.Tensor | None = None,
    pdl: bool = False,
    *,
    k_scale: float = 1.0,  # FP8 caches: key = stored * k_scale
    v_scale: float = 1.0,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Same contract as `kernels.reference.paged_attention`, in one launch (two with split-K).

    When max_seqlen_q * (num_heads // num_kv_heads) fits one row tile, the grid has one program
    per sequence and KV head; an under-estimated max_seqlen_q would then drop query rows.
    `key`/`value`, when given, must be exactly what `store_kv` wrote to the cache for these
    tokens: prefill tiles then read this step's keys from them by TMA instead of gathering them
    through the block table.

    `pdl` launches the kernels as programmatic dependents (Hopper and later; elsewhere it does
    nothing): this launch starts while the kernel before it finishes and waits for it only
    before reading the query, `key`/`value` and the cache. The caller promises that the kernel
    right before it writes none of block_tables, seq_lens and cu_seqlens_q (the engine copies
    them from the host before the step; the kernel before attention is `store_kv`).

    An FP8 cache (e4m3) is read as such and converted in the kernel (to fp16 under a 16-bit
    query, `FP8_DOT_F16`), its k_scale folded into the softmax scale and its v_scale into the
    output. Its keys all come from the cache, this step's too (no TMA of `key`/`value`):
    attention then sees the stored values, the same as every later step and every prefix-cache
    hit will.
    """
    check_inputs(query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q)
    group = query.shape[1] // k_cache.shape[2]
    rules = functools.partial(
        choose_config,
        num_seqs=seq_lens.shape[0],
        num_kv_heads=k_cache.shape[2],
        group=group,
        head_dim=query.shape[2],
        max_seqlen_k=max_seqlen_k,
        dtype=query.dtype,
        device=query.device,
        fp8_cache=k_cache.dtype in FP8_KV_DTYPES,
    )
    config = rules(max_seqlen_q=max_seqlen_q, num_tokens=query.shape[0])
    decode_config = None
    if (
        DECODE_TILES_APART
        and max_seqlen_q * group > config.block_m  # prefill tiles: decode launches never ask
        and seq_lens.shape[0] * k_cache.shape[2]
        >= DECODE_APART_MIN_WAVES * device_limits(query.device)[0]
    ):
        decode_config = rules(max_seqlen_q=1)  # unsplit: the rules split under one an SM
    args = (query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q)
    options = _LaunchOptions(
        scale, max_seqlen_q, config, key, value, pdl, k_scale, v_scale, decode_config
    )
    return _launch(*args, options)


def paged_attention_with_config(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1] int32
    scale: float,
    max_seqlen_q: int,
    config: AttentionConfig,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    pdl: bool = False,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """`paged_attention` with an explicit configuration (tests and benchmark sweeps)."""
    check_inputs(query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q)
    args = (query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q)
    options = _LaunchOptions(scale, max_seqlen_q, config, key, value, pdl, k_scale, v_scale)
    return _launch(*args, options)


@dataclass(frozen=True)
class _LaunchOptions:
    scale: float
    max_seqlen_q: int
    config: AttentionConfig
    key: torch.Tensor | None
    value: torch.Tensor | None
    pdl: bool
    k_scale: float
    v_scale: float
    # DECODE_TILES_APART: the unsplit configuration of the decode launch that runs after the
    # prefill tiles' launch
    decode_config: AttentionConfig | None = None


def _launch(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    options: _LaunchOptions,
) -> torch.Tensor:
    if not options.scale > 0:
        raise ValueError(f"scale must be positive, got {options.scale}")
    check_kv_scales(k_cache.dtype, options.k_scale, options.v_scale)
    num_tokens = query.shape[0]
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0 or seq_lens.shape[0] == 0:
        return out
    tensors = _Tensors(out, query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q)
    decode_config = options.decode_config
    if decode_config is None:
        _launch_kernel(tensors, options, options.config, options.max_seqlen_q, ALL_SEQS)
    else:
        if decode_config.num_splits != 1:
            raise ValueError("the decode launch beside prefill tiles must not split")
        # The prefill launch first: with split-K its merge writes every row.
        _launch_kernel(tensors, options, options.config, options.max_seqlen_q, SEVERAL_TOKENS)
        _launch_kernel(tensors, options, decode_config, 1, ONE_TOKEN)
    return out


@dataclass(frozen=True)
class _Tensors:
    out: torch.Tensor
    query: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor


def _launch_kernel(
    t: _Tensors,
    options: _LaunchOptions,
    config: AttentionConfig,
    max_seqlen_q: int,
    seqs: int,
) -> None:
    """One launch of the kernel (and the merge, with split-K) over the sequences `seqs` picks,
    writing their rows of t.out."""
    query, k_cache = t.query, t.k_cache
    key, value, pdl = options.key, options.value, options.pdl
    dot_f16 = (
        FP8_DOT_F16
        and k_cache.dtype in FP8_KV_DTYPES
        and query.dtype in (torch.float16, torch.bfloat16)
    )
    qk_scale = math.log2(math.e) * options.k_scale * (1.0 if dot_f16 else options.scale)
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    num_seqs = t.seq_lens.shape[0]
    split = config.num_splits > 1
    part_shape = (config.num_splits, num_tokens, num_heads) if split else (0, 0, 0)
    part_acc = query.new_empty((*part_shape, head_dim), dtype=torch.float32)
    part_max = query.new_empty(part_shape, dtype=torch.float32)
    part_sum = query.new_empty(part_shape, dtype=torch.float32)
    one_tile_per_seq = max_seqlen_q * group <= config.block_m
    num_tiles = num_seqs if one_tile_per_seq else num_tokens * group // config.block_m + num_seqs
    grid = (num_tiles * num_kv_heads * config.num_splits,)
    new_kv = None
    if config.step_kv and not one_tile_per_seq and key is not None and value is not None:
        new_kv = new_kv_descriptors(key, value, query, k_cache, config.block_n)
    pdl = pdl and pdl_device(query.device)
    chunk_keys = 0
    if config.one_pass and new_kv is None:
        # At most MAX_CHUNK_BLOCKS block ids a chunk (small blocks), whole key tiles.
        most = (MAX_CHUNK_BLOCKS - 2) * block_size // config.block_n * config.block_n
        chunk_keys = min(config.ids_chunk_keys, max(config.block_n, most))
    _paged_attention_kernel[grid](
        out_ptr=t.out,
        part_acc_ptr=part_acc,
        part_max_ptr=part_max,
        part_sum_ptr=part_sum,
        query_ptr=query,
        k_new_desc=new_kv[0] if new_kv else None,
        v_new_desc=new_kv[1] if new_kv else None,
        k_cache_ptr=k_cache,
        v_cache_ptr=t.v_cache,
        block_tables_ptr=t.block_tables,
        seq_lens_ptr=t.seq_lens,
        cu_seqlens_q_ptr=t.cu_seqlens_q,
        qk_scale=qk_scale,
        q_scale=options.scale,
        v_scale=options.v_scale,
        num_seqs=num_seqs,
        num_tokens=num_tokens,
        num_kv_heads=num_kv_heads,
        num_splits=config.num_splits,
        query_stride_token=query.stride(0),
        query_stride_head=query.stride(1),
        cache_stride_block=k_cache.stride(0),
        cache_stride_slot=k_cache.stride(1),
        block_table_stride=t.block_tables.stride(0),
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        SPLIT_K=split,
        ONE_TILE_PER_SEQ=one_tile_per_seq,
        NEW_KV_TMA=new_kv is not None,
        ONE_PASS=config.one_pass and new_kv is None,
        CHUNK_KEYS=chunk_keys,
        CHUNK_BLOCKS=triton.next_power_of_2(chunk_keys // block_size + 2),
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        SCALE_V=options.v_scale != 1.0,
        DOT_F16=dot_f16,
        PDL=pdl,
        SEQS=seqs,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **_register_cap(config),
        **launch_options(pdl),
    )
    if split:
        merge_splits(t.out, part_acc, part_max, part_sum, t.cu_seqlens_q[num_seqs:], pdl)


def _register_cap(config: AttentionConfig) -> dict[str, int]:
    """The launch option that caps registers a thread (ptxas .maxnreg; NVIDIA only)."""
    if config.max_registers is None or torch.version.hip is not None:
        return {}
    return {"maxnreg": config.max_registers}


def new_kv_descriptors(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,
    query: torch.Tensor,
    k_cache: torch.Tensor,
    block_n: int,
) -> tuple[TensorDescriptor, TensorDescriptor] | None:
    """TMA descriptors over this step's K/V as [num_tokens, num_kv_heads * head_dim] matrices,
    or None where TMA cannot read them (then the cache serves every key)."""
    if not NEW_KV_TMA or TensorDescriptor is None or not _tma_device(query.device):
        return None
    num_tokens, num_kv_heads, head_dim = query.shape[0], k_cache.shape[2], k_cache.shape[3]
    if query.device.type == "cuda" and query.dtype not in (torch.float16, torch.bfloat16):
        return None  # fp32 rows are 512 bytes, past one TMA box; its speed is not the point
    if k_cache.dtype != query.dtype:
        return None  # an FP8 cache: attend to what was stored, not to the unrounded rows
    descriptors = []
    for t in (key, value):
        if (
            t.shape != (num_tokens, num_kv_heads, head_dim)
            or t.dtype != query.dtype
            or t.device != query.device
            or t.stride(2) != 1
            or t.stride(1) != head_dim
            or (t.stride(0) * t.element_size()) % 16
            or t.data_ptr() % 16
        ):
            return None
        shape = [num_tokens, num_kv_heads * head_dim]
        descriptors.append(TensorDescriptor(t, shape, [t.stride(0), 1], [block_n, head_dim]))
    return descriptors[0], descriptors[1]


def _tma_device(device: torch.device) -> bool:
    if device.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
