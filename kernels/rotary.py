"""Neox-style rotary embedding of q and k in place, in one launch (Triton).

One program per token reads its position's cos/sin row once and rotates every query and key head
of that token. q and k may be strided views of the fused qkv projection output (token stride
q+2kv wide); only head_dim must be contiguous. The fp32 arithmetic is the reference's, op for op
with no FMA contraction, so results equal `kernels.reference.rotary_embedding` bit for bit.
"""

import torch
import triton
import triton.language as tl

from llm_worker.kernels.pdl import dependents_at_start, launch_options, pdl_device

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _rotate_heads(
    x_ptr,  # [num_tokens, num_heads, head_dim], head_dim contiguous
    token_idx,  # int64 scalar
    stride_token,
    stride_head,
    num_heads,
    cos,  # [1, BLOCK_HALF] fp32
    sin,  # [1, BLOCK_HALF] fp32
    HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
):
    offs_head = tl.arange(0, BLOCK_HEADS)[:, None]
    offs_dim = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (offs_head < num_heads) & (offs_dim < HALF)
    first = x_ptr + token_idx * stride_token + offs_head * stride_head + offs_dim
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    # The reference computes x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1].
    tl.store(first, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(first + HALF, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim], head_dim contiguous
    key_ptr,  # [num_tokens, num_kv_heads, head_dim], head_dim contiguous
    positions_ptr,  # [num_tokens] int64
    cos_sin_ptr,  # [max_position, head_dim] fp32: cos in [:half], sin in [half:]
    query_stride_token,
    query_stride_head,
    key_stride_token,
    key_stride_head,
    cos_sin_stride,
    num_heads,
    num_kv_heads,
    HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_KV_HEADS: tl.constexpr,
    PDL: tl.constexpr,  # a programmatic dependent: positions and cos/sin read before the wait
    EARLY: tl.constexpr,  # with PDL: store_kv may launch as this starts (`dependents_at_start`)
):
    if PDL and EARLY:
        tl.extra.cuda.gdc_launch_dependents()
    token_idx = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token_idx)
    offs = tl.arange(0, BLOCK_HALF)
    cos_row = cos_sin_ptr + position * cos_sin_stride + offs
    cos = tl.load(cos_row, mask=offs < HALF, other=0.0)[None, :]
    sin = tl.load(cos_row + HALF, mask=offs < HALF, other=0.0)[None, :]
    if PDL:
        tl.extra.cuda.gdc_wait()
    _rotate_heads(
        query_ptr, token_idx, query_stride_token, query_stride_head, num_heads, cos, sin,
        HALF, BLOCK_HALF, BLOCK_HEADS,
    )  # fmt: skip
    _rotate_heads(
        key_ptr, token_idx, key_stride_token, key_stride_head, num_kv_heads, cos, sin,
        HALF, BLOCK_HALF, BLOCK_KV_HEADS,
    )  # fmt: skip


def _check(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> None:
    if query.dim() != 3 or key.dim() != 3 or query.shape[0] != key.shape[0]:
        raise ValueError(
            f"query and key must be [num_tokens, heads, head_dim] with equal num_tokens, got "
            f"{list(query.shape)} and {list(key.shape)}"
        )
    head_dim = query.shape[2]
    if key.shape[2] != head_dim or head_dim % 2 or cos_sin_cache.shape[1:] != (head_dim,):
        raise ValueError(
            f"query, key and cos_sin_cache must share an even head_dim, got {list(query.shape)}, "
            f"{list(key.shape)}, {list(cos_sin_cache.shape)}"
        )
    if query.dtype not in DTYPES or key.dtype != query.dtype:
        raise ValueError(f"query and key must share a float dtype, got {query.dtype}, {key.dtype}")
    if query.stride(2) != 1 or key.stride(2) != 1:
        raise ValueError(
            f"query and key must be contiguous in head_dim, got strides {query.stride()} and "
            f"{key.stride()}"
        )
    if cos_sin_cache.dtype != torch.float32 or cos_sin_cache.stride(1) != 1:
        raise ValueError(
            f"cos_sin_cache must be float32 with contiguous rows, got {cos_sin_cache.dtype} "
            f"strides {cos_sin_cache.stride()}"
        )
    if positions.shape != (query.shape[0],) or positions.dtype != torch.int64:
        raise ValueError(
            f"positions must be int64 [{query.shape[0]}], got {positions.dtype} "
            f"{list(positions.shape)}"
        )
    devices = {t.device for t in (positions, query, key, cos_sin_cache)}
    if len(devices) > 1:
        raise ValueError(
            f"positions, query, key and cos_sin_cache are on several devices: {devices}"
        )


def rotary_embedding(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]; rotated in place
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]; rotated in place
    cos_sin_cache: torch.Tensor,  # [max_position, head_dim] fp32: cos in [:half], sin in [half:]
    pdl: bool = False,  # a programmatic dependent of a kernel that writes neither positions
    # nor cos_sin_cache (`kernels.pdl`)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `kernels.reference.rotary_embedding`, but rotates query and key in place
    and returns them. Positions are not range-checked (that would read them back to the host,
    which CUDA graphs forbid): each must be below max_position."""
    _check(positions, query, key, cos_sin_cache)
    num_tokens, num_heads, head_dim = query.shape
    if num_tokens == 0:
        return query, key
    half = head_dim // 2
    block_heads = triton.next_power_of_2(num_heads)
    block_half = triton.next_power_of_2(half)
    pdl = pdl and pdl_device(query.device)
    _rotary_kernel[(num_tokens,)](
        query_ptr=query,
        key_ptr=key,
        positions_ptr=positions,
        cos_sin_ptr=cos_sin_cache,
        query_stride_token=query.stride(0),
        query_stride_head=query.stride(1),
        key_stride_token=key.stride(0),
        key_stride_head=key.stride(1),
        cos_sin_stride=cos_sin_cache.stride(0),
        num_heads=num_heads,
        num_kv_heads=key.shape[1],
        HALF=half,
        BLOCK_HALF=block_half,
        BLOCK_HEADS=block_heads,
        BLOCK_KV_HEADS=triton.next_power_of_2(key.shape[1]),
        PDL=pdl,
        EARLY=dependents_at_start(pdl, num_tokens),
        num_warps=8 if block_heads * block_half > 2048 else 4,
        enable_fp_fusion=False,
        **launch_options(pdl),
    )
    return query, key
