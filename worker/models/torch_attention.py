"""The `torch` backend: plain PyTorch over the paged layout, batched where it pays.

kernels/reference.py loops over sequences and is the oracle; this one gathers the KV of every
decoding sequence (one new token each) in one indexing op and runs one masked SDPA for all of
them, which is what a CPU decode step is made of; short multi-token queries (draft verification,
small chunks) go through the same batched call with a causal mask. Long queries (prefill chunks)
go through the oracle's per-sequence path.
"""

import torch
import torch.nn.functional as F

from llm_worker.kernels import reference

SHORT_QUERY = 32  # queries up to this many tokens (decode, verification, short chunks) are batched


def _short_query_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    starts: torch.Tensor,  # [B] int64: first row of each sequence's query
    q_lens: torch.Tensor,  # [B] int64, 1..SHORT_QUERY
    caches: tuple[tuple[torch.Tensor, float], ...],  # (k_cache, k_scale), (v_cache, v_scale)
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # rows [n], their outputs [n, num_heads, head_dim]
    """One masked SDPA over every sequence's gathered KV, queries padded to the longest."""
    num_seqs, (num_heads, head_dim) = starts.shape[0], query.shape[1:]
    block_size, num_kv_heads = caches[0][0].shape[1], caches[0][0].shape[2]
    num_blocks = -(-int(seq_lens.max()) // block_size)
    table = block_tables[:, :num_blocks].long()
    max_len = num_blocks * block_size
    k, v = (
        reference.dequantize_kv(reference.index_rows(cache, table), query.dtype, cache_scale)
        .view(num_seqs, max_len, num_kv_heads, head_dim)
        .transpose(1, 2)
        for cache, cache_scale in caches
    )
    max_q = int(q_lens.max())
    j = torch.arange(max_q, device=query.device)
    real = j[None, :] < q_lens[:, None]  # [B, Q]
    rows = starts[:, None] + torch.minimum(j[None, :], q_lens[:, None] - 1)  # padded: repeat last
    # Query j of a sequence sits at position seq_len - q_len + j and sees keys up to there.
    q_pos = seq_lens[:, None].long() - q_lens[:, None] + j[None, :]
    k_pos = torch.arange(max_len, device=query.device)
    mask = k_pos[None, None, :] <= q_pos[:, :, None]  # [B, Q, S]
    out = F.scaled_dot_product_attention(
        query[rows].transpose(1, 2),  # [B, H, Q, D]
        k,
        v,
        attn_mask=mask[:, None, :, :],
        scale=scale,
        enable_gqa=num_heads != num_kv_heads,
    ).transpose(1, 2)  # [B, Q, H, D]
    return rows[real], out[real]


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1] int32
    scale: float,
    max_seqlen_q: int,
    max_seqlen_k: int,
    key: torch.Tensor | None = None,  # this step's K/V: the cache already holds them; unused
    value: torch.Tensor | None = None,
    *,
    k_scale: float = 1.0,  # FP8 caches: key = stored * k_scale
    v_scale: float = 1.0,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    q_lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
    is_short = (q_lens >= 1) & (q_lens <= SHORT_QUERY)
    if not bool(is_short.any()):
        return reference.paged_attention(
            query,
            k_cache,
            v_cache,
            block_tables,
            seq_lens,
            cu_seqlens_q,
            scale,
            max_seqlen_q,
            max_seqlen_k,
            k_scale=k_scale,
            v_scale=v_scale,
        )
    out = torch.empty_like(query)
    short_idx = is_short.nonzero().squeeze(1)
    rows, values = _short_query_attention(
        query, cu_seqlens_q[short_idx].long(), q_lens[short_idx],
        ((k_cache, k_scale), (v_cache, v_scale)),
        block_tables[short_idx], seq_lens[short_idx], scale,
    )  # fmt: skip
    out[rows] = values
    long_idx = (~is_short & (q_lens > 0)).nonzero().squeeze(1)
    if long_idx.numel() == 0:
        return out
    # Long queries (prefill chunks): the oracle, restricted to those sequences.
    starts, lens = cu_seqlens_q[long_idx].long(), q_lens[long_idx]
    token_rows = torch.cat(
        [torch.arange(int(s), int(s + n)) for s, n in zip(starts, lens, strict=True)]
    )
    sub_cu = torch.zeros(len(long_idx) + 1, dtype=torch.int32, device=query.device)
    sub_cu[1:] = lens.cumsum(0)
    out[token_rows] = reference.paged_attention(
        query[token_rows],
        k_cache,
        v_cache,
        block_tables[long_idx],
        seq_lens[long_idx],
        sub_cu,
        scale,
        max_seqlen_q,
        max_seqlen_k,
        k_scale=k_scale,
        v_scale=v_scale,
    )
    return out
