"""Pure-PyTorch oracles for every kernel, over the same paged layout.

These are also the `torch` attention backend: they run anywhere torch runs (CPU included) and are
what the Triton kernels are tested against. Layout, shared by every backend:

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    slot = block_id * block_size + offset_in_block; slot -1 means "padding, write nothing".

A batch packs the new tokens of every sequence back to back (`cu_seqlens_q`); the new tokens of
sequence i are the last `q_len_i` positions of its context of `seq_lens[i]` tokens, so one call
serves prefill, chunked prefill over a cached prefix, decode and verification of draft tokens.
"""

import torch
import torch.nn.functional as F

from llm_worker.kernels.fp8_format import FP8_DTYPE, FP8_MAX, FP8_MIN_SCALE, Fp8Activation


def store_kv(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64, -1 = skip
) -> None:
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    rows = (slot_mapping >= 0).nonzero().squeeze(1)
    slots = slot_mapping[rows]
    k_flat = k_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    v_flat = v_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    k_flat.index_copy_(0, slots, key[rows].to(k_cache.dtype))
    v_flat.index_copy_(0, slots, value[rows].to(v_cache.dtype))


def gather_kv(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_table: torch.Tensor,  # [max_blocks_per_seq] int32
    seq_len: int,
) -> torch.Tensor:  # [seq_len, num_kv_heads, head_dim]
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = cache[block_table[:num_blocks].long()]
    return blocks.reshape(num_blocks * block_size, *cache.shape[2:])[:seq_len]


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32, context length including the new tokens
    cu_seqlens_q: torch.Tensor,  # [num_seqs + 1] int32, offsets of each sequence's new tokens
    scale: float,
    max_seqlen_q: int,  # upper bounds, used by kernels to pick a launch grid; ignored here
    max_seqlen_k: int,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention of each sequence's new tokens over its whole paged context."""
    del max_seqlen_q, max_seqlen_k
    num_heads = query.shape[1]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        q_start, q_end = cu[i], cu[i + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        k = gather_kv(k_cache, block_tables[i], seq_len)  # [S, Hkv, D]
        v = gather_kv(v_cache, block_tables[i], seq_len)
        q = query[q_start:q_end].transpose(0, 1)  # [H, Q, D]
        k = k.transpose(0, 1).repeat_interleave(group, dim=0).to(q.dtype)  # [H, S, D]
        v = v.transpose(0, 1).repeat_interleave(group, dim=0).to(q.dtype)
        # New token j sits at absolute position seq_len - q_len + j and sees keys up to there.
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        mask = k_pos[None, :] <= q_pos[:, None]  # [Q, S]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        out[q_start:q_end] = o.transpose(0, 1)
    return out


def rms_norm(
    x: torch.Tensor,  # [num_tokens, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [num_tokens, hidden]; added to x first
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (normed, new_residual): the sum in the input dtype, the norm in fp32, as HF does."""
    new_residual = x if residual is None else x + residual
    h = new_residual.float()
    variance = h.pow(2).mean(-1, keepdim=True)
    normed = (h * torch.rsqrt(variance + eps)).to(x.dtype)
    return weight * normed, new_residual


def rotary_embedding(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cos_sin_cache: torch.Tensor,  # [max_position, head_dim] fp32: cos in [:half], sin in [half:]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotation (the rotate_half of HF Llama / Qwen), returned in the input dtype."""
    half = cos_sin_cache.shape[1] // 2
    cos_sin = cos_sin_cache[positions]
    cos = torch.cat([cos_sin[:, :half]] * 2, dim=-1)[:, None, :]  # [T, 1, D]
    sin = torch.cat([cos_sin[:, half:]] * 2, dim=-1)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        rotated = torch.cat([-x2, x1], dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)

    return rotate(query), rotate(key)


def silu_and_mul(
    gate_up: torch.Tensor,  # [num_tokens, 2 * intermediate]: gate in the first half, up after
) -> torch.Tensor:  # [num_tokens, intermediate]
    """The SwiGLU activation of a fused gate|up projection, in the input dtype."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# FP8 activation quantization: the inputs of FP8 GEMMs (kernels/fp8_quant.py and the fused
# RMSNorm and SiLU*mul variants in kernels/rms_norm.py and kernels/silu_mul.py).


def quantize_fp8(
    x: torch.Tensor,  # [num_tokens, hidden]
    static_scale: torch.Tensor | None = None,  # [1] fp32: one scale for every row
) -> Fp8Activation:
    """Symmetric e4m3 per row: scale = max(absmax / 448, FP8_MIN_SCALE) unless a static scale is
    given; values x / scale clamped to +-448, rounded to nearest (ties to even)."""
    xf = x.float()
    if static_scale is None:
        scale = (xf.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(min=FP8_MIN_SCALE)
    else:
        scale = static_scale.float().expand(x.shape[0], 1).contiguous()
    data = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return Fp8Activation(data, scale)


def rms_norm_fp8(
    x: torch.Tensor,  # [num_tokens, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,
    static_scale: torch.Tensor | None = None,
) -> tuple[Fp8Activation, torch.Tensor]:
    """`rms_norm`, its output (rounded to its dtype as `rms_norm` returns it) quantized."""
    normed, new_residual = rms_norm(x, weight, eps, residual)
    return quantize_fp8(normed, static_scale), new_residual


def silu_and_mul_fp8(
    gate_up: torch.Tensor,  # [num_tokens, 2 * intermediate]
    static_scale: torch.Tensor | None = None,
) -> Fp8Activation:
    """`silu_and_mul`, its output (in the input dtype) quantized."""
    return quantize_fp8(silu_and_mul(gate_up), static_scale)
