"""The `torch` backend: plain PyTorch over the paged layout, batched where it pays.

kernels/reference.py loops over sequences and is the oracle; this one gathers the KV of every
decoding sequence (one new token each) in one indexing op and runs one masked SDPA for all of
them, which is what a CPU decode step is made of. Multi-token queries (prefill chunks, draft
verification) go through the oracle's per-sequence path.
"""

import torch
import torch.nn.functional as F

from kernels import reference


def _decode_attention(
    query: torch.Tensor,  # [B, num_heads, head_dim], one token per sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
) -> torch.Tensor:  # [B, num_heads, head_dim]
    num_seqs, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_blocks = -(-int(seq_lens.max()) // block_size)
    table = block_tables[:, :num_blocks].long()
    max_len = num_blocks * block_size
    k = k_cache[table].view(num_seqs, max_len, num_kv_heads, head_dim).transpose(1, 2)
    v = v_cache[table].view(num_seqs, max_len, num_kv_heads, head_dim).transpose(1, 2)
    valid = torch.arange(max_len, device=query.device)[None, :] < seq_lens[:, None].long()
    out = F.scaled_dot_product_attention(
        query[:, :, None, :],
        k.to(query.dtype),
        v.to(query.dtype),
        attn_mask=valid[:, None, None, :],
        scale=scale,
        enable_gqa=num_heads != num_kv_heads,
    )
    return out[:, :, 0, :]


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
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    is_decode = q_lens == 1
    if not bool(is_decode.any()):
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
        )
    out = torch.empty_like(query)
    decode_idx = is_decode.nonzero().squeeze(1)
    rows = cu_seqlens_q[decode_idx].long()
    out[rows] = _decode_attention(
        query[rows], k_cache, v_cache, block_tables[decode_idx], seq_lens[decode_idx], scale
    )
    if bool(is_decode.all()):
        return out
    # Multi-token queries: the oracle, restricted to those sequences.
    multi_idx = (~is_decode).nonzero().squeeze(1)
    starts, lens = cu_seqlens_q[multi_idx].long(), q_lens[multi_idx].long()
    token_rows = torch.cat(
        [torch.arange(int(s), int(s + n)) for s, n in zip(starts, lens, strict=True)]
    )
    sub_cu = torch.zeros(len(multi_idx) + 1, dtype=torch.int32, device=query.device)
    sub_cu[1:] = lens.cumsum(0)
    out[token_rows] = reference.paged_attention(
        query[token_rows],
        k_cache,
        v_cache,
        block_tables[multi_idx],
        seq_lens[multi_idx],
        sub_cu,
        scale,
        max_seqlen_q,
        max_seqlen_k,
    )
    return out
