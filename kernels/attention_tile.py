"""The pieces of one `paged_attention` program (Triton): which sequence its tile slot belongs
to, the online-softmax loop over a range of paged keys, and the store of its tile.
"""

import triton
import triton.language as tl


@triton.jit
def find_sequence(
    cu_seqlens_q_ptr,
    num_seqs,
    tile_idx,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SEQ_CHUNK: tl.constexpr,
):
    """Largest i with first_tile(i) <= tile_idx, as a count (first_tile is strictly increasing).

    Counting over SEQ_CHUNK sequences per vector load costs one memory round trip for batches of
    up to SEQ_CHUNK sequences, where a binary search pays log2(num_seqs) dependent ones before
    the tile can start.
    """
    count = tile_idx * 0
    for chunk_start in range(0, num_seqs, SEQ_CHUNK):
        seq = chunk_start + tl.arange(0, SEQ_CHUNK)
        in_batch = seq < num_seqs
        first_tile = tl.load(cu_seqlens_q_ptr + seq, mask=in_batch, other=0) * GROUP // BLOCK_M
        count += tl.sum((in_batch & (first_tile + seq <= tile_idx)).to(tl.int32), 0)
    return count - 1


@triton.jit
def online_softmax_step(
    acc,  # [BLOCK_M, HEAD_DIM] fp32, unnormalised output
    m_i,  # [BLOCK_M] fp32, running max of the log2-scaled scores
    l_i,  # [BLOCK_M] fp32, running sum of exp2(score - m_i)
    q,  # [BLOCK_M, HEAD_DIM]
    k,  # [BLOCK_N, HEAD_DIM], keys at positions kv_pos; FP8 ones converted to q's dtype here
    v,  # [BLOCK_N, HEAD_DIM]; rows at kv_pos >= kv_hi must be finite (zero them if unsure)
    kv_pos,  # [BLOCK_N] key positions
    kv_hi,  # one past the last key position
    key_limit,  # [BLOCK_M] row r sees keys < key_limit[r]; only read when MASKED
    qk_scale,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Fold one key tile into the running softmax state of the query rows. An FP8 cache's K/V
    enter the products as the query's dtype (exact: e4m3 values fit in 16 bits); their scales
    are folded into qk_scale and the tile's final store."""
    k = k.to(q.dtype)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
    # The scale (> 0) is applied inside exp2's argument, where it fuses into one FMA.
    if MASKED:
        # One compare an element: the row's own limit clamped to the range's end first.
        visible = kv_pos[None, :] < tl.minimum(key_limit, kv_hi)[:, None]
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1) * qk_scale)
        # A row with nothing visible yet keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        # Every key of an unmasked tile is visible to every row, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(scores, 1) * qk_scale)
        m_shift = m_new
    p = tl.exp2(scores * qk_scale - m_shift[:, None])
    alpha = tl.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def attend_new_keys(
    acc,  # [BLOCK_M, HEAD_DIM] fp32
    m_i,  # [BLOCK_M] fp32
    l_i,  # [BLOCK_M] fp32
    q,  # [BLOCK_M, HEAD_DIM]
    k_desc,  # tensor descriptor over this step's keys [num_tokens, num_kv_heads * head_dim]
    v_desc,  # same over the values; blocks of [BLOCK_N, HEAD_DIM]
    desc_col,  # this KV head's first column: kv_head * HEAD_DIM
    row_of_pos0,  # descriptor row that key position 0 would have: q_start - context_start
    kv_lo,  # first key position (any, not a multiple of BLOCK_N)
    kv_hi,  # one past the last key position of this sequence's range
    key_limit,  # [BLOCK_M]; only read when MASKED
    qk_scale,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ZERO_V: tl.constexpr = False,
):
    """The keys this step wrote, read from the step's own contiguous K/V by TMA (no block-table
    gather). Rows past kv_hi belong to the same sequence's later tokens, the next sequence, the
    padding of a CUDA graph, or lie past the tensor (zero-filled); MASKED masks them.

    Padding rows may hold anything, NaN included, and 0 * NaN would poison the accumulator, so
    with ZERO_V their values are zeroed. That select takes V out of shared memory and back, a
    cost short prefills feel, and only the tiles that reach the padding need it: the caller
    picks them."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(kv_lo, kv_hi, BLOCK_N):
        kv_pos = start_n + offs_n
        k = k_desc.load([row_of_pos0 + start_n, desc_col])
        v = v_desc.load([row_of_pos0 + start_n, desc_col])
        if ZERO_V:
            v = tl.where((kv_pos < kv_hi)[:, None], v, 0.0)
        acc, m_i, l_i = online_softmax_step(
            acc, m_i, l_i, q, k, v, kv_pos, kv_hi, key_limit, qk_scale, MASKED, DOT_PRECISION
        )
    return acc, m_i, l_i


@triton.jit
def tile_block_ids(block_table_ptr, kv_lo, kv_hi, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_N] block ids of the keys kv_lo + [0, BLOCK_N) (0 past kv_hi)."""
    pos = kv_lo + tl.arange(0, BLOCK_N)
    return tl.load(block_table_ptr + pos // BLOCK_SIZE, mask=pos < kv_hi, other=0)


@triton.jit
def attend_kv_range(
    acc,  # [BLOCK_M, HEAD_DIM] fp32, unnormalised output
    m_i,  # [BLOCK_M] fp32, running max of the log2-scaled scores
    l_i,  # [BLOCK_M] fp32, running sum of exp2(score - m_i)
    q,  # [BLOCK_M, HEAD_DIM]
    k_head_ptr,  # k_cache at this KV head: [num_blocks, block_size, (head), head_dim]
    v_head_ptr,  # v_cache at this KV head
    block_table_ptr,  # [max_blocks_per_seq] int32, this sequence's row
    next_ids,  # [BLOCK_N] block ids of the first key tile: tile_block_ids(..., kv_lo, kv_hi)
    kv_lo,  # first key position, a multiple of BLOCK_N
    kv_hi,  # one past the last key position
    key_limit,  # [BLOCK_M] row r sees keys < key_limit[r]; only read when MASKED
    qk_scale,
    cache_stride_block,
    cache_stride_slot,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # The block ids of the next key tile are loaded one iteration ahead and carried: K/V
    # addresses then come from a loop-carried value, not from a load of the same iteration, so
    # the software pipeline keeps num_stages - 1 K/V tiles in flight. (Gathered in the same
    # iteration, the index load took a pipeline stage of its own and left one tile in flight.)
    # The caller loads the first tile's, so that it can do so before it waits on another kernel.
    for start_n in range(kv_lo, kv_hi, BLOCK_N):
        kv_pos = start_n + offs_n
        block_ids = next_ids
        next_pos = kv_pos + BLOCK_N
        next_ids = tl.load(block_table_ptr + next_pos // BLOCK_SIZE, mask=next_pos < kv_hi, other=0)
        slot_offs = (
            block_ids.to(tl.int64) * cache_stride_block + (kv_pos % BLOCK_SIZE) * cache_stride_slot
        )
        # K and V share one [BLOCK_N, HEAD_DIM] offset tile; K is transposed in shared memory.
        kv_offs = slot_offs[:, None] + offs_d[None, :]
        if MASKED:
            kv_valid = kv_pos < kv_hi
            k = tl.load(k_head_ptr + kv_offs, mask=kv_valid[:, None], other=0.0)
            v = tl.load(v_head_ptr + kv_offs, mask=kv_valid[:, None], other=0.0)
        else:
            k = tl.load(k_head_ptr + kv_offs)
            v = tl.load(v_head_ptr + kv_offs)
        acc, m_i, l_i = online_softmax_step(
            acc, m_i, l_i, q, k, v, kv_pos, kv_hi, key_limit, qk_scale, MASKED, DOT_PRECISION
        )
    return acc, m_i, l_i


@triton.jit
def range_block_ids(
    block_table_ptr, kv_lo, kv_hi, BLOCK_SIZE: tl.constexpr, CHUNK_BLOCKS: tl.constexpr
):
    """[CHUNK_BLOCKS] block ids of the blocks from kv_lo // BLOCK_SIZE on that hold keys of
    [kv_lo, kv_hi) (0 past them)."""
    first_block = kv_lo // BLOCK_SIZE
    offs_b = tl.arange(0, CHUNK_BLOCKS)
    in_range = offs_b < tl.cdiv(kv_hi, BLOCK_SIZE) - first_block
    return tl.load(block_table_ptr + first_block + offs_b, mask=in_range, other=0)


@triton.jit
def attend_kv_split(
    acc,  # [BLOCK_M, HEAD_DIM] fp32, unnormalised output
    m_i,  # [BLOCK_M] fp32
    l_i,  # [BLOCK_M] fp32
    q,  # [BLOCK_M, HEAD_DIM]
    k_head_ptr,  # k_cache at this KV head: [num_blocks, block_size, (head), head_dim]
    v_head_ptr,  # v_cache at this KV head
    chunk_ids,  # [CHUNK_BLOCKS] block ids of the blocks from first_block on
    first_block,  # the block of key position kv_lo: kv_lo // BLOCK_SIZE
    kv_lo,  # first key position, a multiple of BLOCK_N
    kv_hi,  # one past the last key position: (kv_hi - 1) // BLOCK_SIZE - first_block < CHUNK_BLOCKS
    key_limit,  # [BLOCK_M] row r sees keys < key_limit[r]
    qk_scale,
    cache_stride_block,
    cache_stride_slot,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CHUNK_BLOCKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """`attend_kv_range`, MASKED, with the block ids of the whole range in `chunk_ids`, loaded
    before the loop: K/V addresses then depend on no load inside the loop. Each tile takes its
    ids from there by a gather in registers and shared memory, which costs more than a short
    range saves (see `kernels.attention_config.PRELOAD_OVER_SPLIT_KEYS`).

    It stays apart from `attend_kv_range` on purpose: folded into it behind a constexpr (the
    ids' first block then derived from kv_lo inside), the same loop compiles slower with Triton
    3.6 (docs/benchmarks.md, "How the attention rules were chosen")."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(kv_lo, kv_hi, BLOCK_N):
        kv_pos = start_n + offs_n
        kv_valid = kv_pos < kv_hi
        which = tl.minimum(kv_pos // BLOCK_SIZE - first_block, CHUNK_BLOCKS - 1)
        block_ids = tl.gather(chunk_ids, which, 0)
        slot_offs = (
            block_ids.to(tl.int64) * cache_stride_block + (kv_pos % BLOCK_SIZE) * cache_stride_slot
        )
        kv_offs = slot_offs[:, None] + offs_d[None, :]
        k = tl.load(k_head_ptr + kv_offs, mask=kv_valid[:, None], other=0.0)
        v = tl.load(v_head_ptr + kv_offs, mask=kv_valid[:, None], other=0.0)
        acc, m_i, l_i = online_softmax_step(
            acc, m_i, l_i, q, k, v, kv_pos, kv_hi, key_limit, qk_scale, True, DOT_PRECISION
        )
    return acc, m_i, l_i


@triton.jit
def store_tile(
    out_ptr,  # [num_tokens, num_heads, head_dim]
    part_acc_ptr,  # [num_splits, num_tokens, num_heads, head_dim] fp32
    part_max_ptr,  # [num_splits, num_tokens, num_heads] fp32
    part_sum_ptr,  # [num_splits, num_tokens, num_heads] fp32
    acc,  # [BLOCK_M, HEAD_DIM] fp32
    m_i,  # [BLOCK_M] fp32
    l_i,  # [BLOCK_M] fp32
    token_idx,  # [BLOCK_M] index into num_tokens
    head_idx,  # [BLOCK_M] query head
    row_valid,  # [BLOCK_M]
    split_idx,
    num_tokens,
    num_heads,
    out_scale,  # SCALE_OUT: the FP8 cache's v_scale (the output is linear in V)
    HEAD_DIM: tl.constexpr,
    SPLIT_K: tl.constexpr,
    SCALE_OUT: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    if SCALE_OUT:
        acc = acc * out_scale  # split-K partials too: the merge is linear in them
    if not SPLIT_K:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        row = token_idx.to(tl.int64) * num_heads + head_idx
        out_ptrs = out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])
    else:
        row = (split_idx * num_tokens + token_idx).to(tl.int64) * num_heads + head_idx
        tl.store(
            part_acc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_valid[:, None]
        )
        tl.store(part_max_ptr + row, m_i, mask=row_valid)
        tl.store(part_sum_ptr + row, l_i, mask=row_valid)
