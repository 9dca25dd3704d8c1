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

# FP8 KV caches hold e4m3 values (NVIDIA's float8_e4m3fn: no infinities, one NaN pattern).
FP8_KV_DTYPES = (FP8_DTYPE,)
FP8_E4M3_MAX = FP8_MAX


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_KV_DTYPES


def check_kv_scales(cache_dtype: torch.dtype, k_scale: float, v_scale: float) -> None:
    """Scales are positive, and 1 for every cache but an FP8 one (the others store values)."""
    if not (k_scale > 0 and v_scale > 0) or (
        not is_fp8(cache_dtype) and (k_scale, v_scale) != (1.0, 1.0)
    ):
        raise ValueError(
            f"k_scale and v_scale must be positive, and 1 unless the cache is FP8; got {k_scale}"
            f" and {v_scale} for a {cache_dtype} cache"
        )


def quantize_kv(rows: torch.Tensor, cache_dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Rows as a cache of `cache_dtype` stores them. FP8: rows / scale (a multiply by the
    reciprocal, as the kernel does), saturated to +-448 first because a cast turns whatever lies
    past the format's range into NaN, then rounded to nearest. Other caches: a cast."""
    if not is_fp8(cache_dtype):
        return rows.to(cache_dtype)
    inverse = 1.0 / scale
    return (rows.float() * inverse).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(cache_dtype)


def dequantize_kv(rows: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Cache rows as values of `dtype`: FP8 ones times their scale, others cast."""
    if not is_fp8(rows.dtype):
        return rows.to(dtype)
    return (rows.float() * scale).to(dtype)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """FP8 tensors as raw bytes: CPU torch has no index_copy_ for them, and moving bytes is all
    a copy or a gather of cache rows needs."""
    return t.view(torch.uint8) if is_fp8(t.dtype) else t


def index_rows(cache: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """cache[index] for any cache dtype, FP8 included."""
    return _bytes(cache)[index].view(cache.dtype)


def store_kv(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64, -1 = skip
    *,
    k_scale: float = 1.0,  # FP8 caches: stored = key / k_scale
    v_scale: float = 1.0,
) -> None:
    check_kv_scales(k_cache.dtype, k_scale, v_scale)
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    rows = (slot_mapping >= 0).nonzero().squeeze(1)
    slots = slot_mapping[rows]
    for cache, new, scale in ((k_cache, key, k_scale), (v_cache, value, v_scale)):
        flat = _bytes(cache.view(num_blocks * block_size, num_kv_heads, head_dim))
        flat.index_copy_(0, slots, _bytes(quantize_kv(new[rows], cache.dtype, scale)))


def gather_kv(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_table: torch.Tensor,  # [max_blocks_per_seq] int32
    seq_len: int,
) -> torch.Tensor:  # [seq_len, num_kv_heads, head_dim], in the cache's dtype
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = index_rows(cache, block_table[:num_blocks].long())
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
    *,
    k_scale: float = 1.0,  # FP8 caches: key = stored * k_scale
    v_scale: float = 1.0,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention of each sequence's new tokens over its whole paged context, the cache
    dequantized to the query's dtype first."""
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
        k = dequantize_kv(gather_kv(k_cache, block_tables[i], seq_len), query.dtype, k_scale)
        v = dequantize_kv(gather_kv(v_cache, block_tables[i], seq_len), query.dtype, v_scale)
        q = query[q_start:q_end].transpose(0, 1)  # [H, Q, D]
        k = k.transpose(0, 1).repeat_interleave(group, dim=0)  # [H, S, D]
        v = v.transpose(0, 1).repeat_interleave(group, dim=0)
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
