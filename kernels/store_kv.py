"""Write each new token's K/V rows into the paged cache at its slot (Triton).

One program per token copies all of that token's KV heads for both K and V. A slot of -1 marks a
padding token (CUDA-graph padding): its loads and stores are masked off, so it costs no traffic.
An FP8 cache stores each row divided by its layer's scale, saturated to the e4m3 range and
rounded to nearest (`kernels.reference.quantize_kv`).
"""

import torch
import triton
import triton.language as tl

from llm_worker.kernels.pdl import dependents_at_start, launch_options, pdl_device
from llm_worker.kernels.reference import FP8_E4M3_MAX, check_kv_scales, is_fp8

FP8_MAX: tl.constexpr = tl.constexpr(FP8_E4M3_MAX)


@triton.jit
def _round_to_e4m3_grid(x):
    """x (fp32, |x| <= 448) rounded to nearest-even on the e4m3 grid, so that the cast to FP8
    after it is exact whatever rounding the cast does (the CPU interpreter's cast neither rounds
    to even nor carries a rounded-up mantissa into the exponent). The grid step is 2^(e - 3)
    for |x| in [2^e, 2^(e+1)), e >= -6, and 2^-9 below 2^-6 (subnormals). Adding
    C = 1.5 * 2^23 * step lands x + C where one fp32 ulp is one step, so the fp32 add rounds x
    to the grid, ties to even; subtracting C is exact. The sign goes back on last, so that what
    rounds to zero keeps it (-0, as the reference's cast gives)."""
    bits = x.to(tl.uint32, bitcast=True)
    biased_exponent = ((bits & 0x7FFFFFFF) >> 23).to(tl.int32)
    step_exponent = tl.maximum(biased_exponent, 127 - 6) - 3
    magic = (((step_exponent + 23) << 23) | (1 << 22)).to(tl.float32, bitcast=True)
    rounded = ((x + magic) - magic).to(tl.uint32, bitcast=True)
    return (rounded | (bits & 0x80000000)).to(tl.float32, bitcast=True)


@triton.jit
def _copy_token_rows(
    src_ptr,  # [num_tokens, num_kv_heads, head_dim], last dim contiguous
    cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim], contiguous
    token_idx,
    slot,  # int64 scalar
    src_stride_token,
    src_stride_head,
    cache_stride_slot,
    num_kv_heads,
    inv_scale,  # QUANTIZE: 1 / the layer's scale
    HEAD_DIM: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    QUANTIZE: tl.constexpr,  # an FP8 cache: scale, saturate, round
):
    offs_head = tl.arange(0, BLOCK_HEADS)
    offs_dim = tl.arange(0, HEAD_DIM)
    # Broadcast the slot before comparing: the interpreter mistypes `block & scalar_bool` masks.
    slots = tl.zeros([BLOCK_HEADS, 1], dtype=tl.int64) + slot
    mask = (offs_head[:, None] < num_kv_heads) & (slots >= 0)
    src_offs = (
        token_idx.to(tl.int64) * src_stride_token
        + offs_head[:, None] * src_stride_head
        + offs_dim[None, :]
    )
    rows = tl.load(src_ptr + src_offs, mask=mask)
    if QUANTIZE:
        rows = rows.to(tl.float32) * inv_scale
        rows = _round_to_e4m3_grid(tl.minimum(tl.maximum(rows, -FP8_MAX), FP8_MAX))
    cache_offs = slots * cache_stride_slot + offs_head[:, None] * HEAD_DIM + offs_dim[None, :]
    tl.store(cache_ptr + cache_offs, rows.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, head_dim]
    value_ptr,  # [num_tokens, num_kv_heads, head_dim]
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping_ptr,  # [num_tokens] int64, -1 = skip
    key_stride_token,
    key_stride_head,
    value_stride_token,
    value_stride_head,
    cache_stride_slot,  # contiguous cache: slot = block * block_size + offset, one stride
    num_kv_heads,
    k_inv_scale,  # QUANTIZE: 1 / k_scale
    v_inv_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    QUANTIZE: tl.constexpr,  # an FP8 cache
    PDL: tl.constexpr,  # a programmatic dependent: the slot is read before the wait
    EARLY: tl.constexpr,  # with PDL: attention may launch as this starts (`dependents_at_start`)
):
    if PDL and EARLY:
        tl.extra.cuda.gdc_launch_dependents()
    token_idx = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token_idx).to(tl.int64)
    if PDL:
        tl.extra.cuda.gdc_wait()
    _copy_token_rows(
        key_ptr, k_cache_ptr, token_idx, slot, key_stride_token, key_stride_head,
        cache_stride_slot, num_kv_heads, k_inv_scale, HEAD_DIM, BLOCK_HEADS, QUANTIZE,
    )  # fmt: skip
    _copy_token_rows(
        value_ptr, v_cache_ptr, token_idx, slot, value_stride_token, value_stride_head,
        cache_stride_slot, num_kv_heads, v_inv_scale, HEAD_DIM, BLOCK_HEADS, QUANTIZE,
    )  # fmt: skip


def _check_rows(name: str, rows: torch.Tensor, cache: torch.Tensor) -> None:
    if rows.dim() != 3 or rows.shape[1:] != cache.shape[2:]:
        raise ValueError(
            f"{name} must be [num_tokens, {cache.shape[2]}, {cache.shape[3]}], "
            f"got {list(rows.shape)}"
        )
    if rows.stride(2) != 1:
        raise ValueError(f"{name} must be contiguous in head_dim, got strides {rows.stride()}")
    if rows.device != cache.device:
        raise ValueError(f"{name} is on {rows.device} but the cache is on {cache.device}")


def store_kv(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64, -1 = skip
    pdl: bool = False,  # a programmatic dependent of a kernel that does not write slot_mapping
    *,
    k_scale: float = 1.0,  # FP8 caches: stored = key / k_scale
    v_scale: float = 1.0,
) -> None:
    """Same contract as `kernels.reference.store_kv`: rows are cast to the cache dtype, FP8
    caches quantize them with the layer's scales."""
    if k_cache.shape != v_cache.shape or k_cache.dtype != v_cache.dtype or k_cache.dim() != 4:
        raise ValueError(
            f"k_cache and v_cache must be equal [num_blocks, block_size, num_kv_heads, head_dim]"
            f" tensors, got {list(k_cache.shape)} {k_cache.dtype} / {list(v_cache.shape)}"
            f" {v_cache.dtype}"
        )
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    _check_rows("key", key, k_cache)
    _check_rows("value", value, v_cache)
    num_tokens = key.shape[0]
    if value.shape[0] != num_tokens or slot_mapping.shape != (num_tokens,):
        raise ValueError(
            f"key, value and slot_mapping disagree on num_tokens: {key.shape[0]}, "
            f"{value.shape[0]}, {list(slot_mapping.shape)}"
        )
    if slot_mapping.dtype != torch.int64 or slot_mapping.device != k_cache.device:
        raise ValueError(
            f"slot_mapping must be int64 on {k_cache.device}, got {slot_mapping.dtype} on "
            f"{slot_mapping.device}"
        )
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two, got {head_dim}")
    check_kv_scales(k_cache.dtype, k_scale, v_scale)
    if num_tokens == 0:
        return
    pdl = pdl and pdl_device(key.device)
    _store_kv_kernel[(num_tokens,)](
        key_ptr=key,
        value_ptr=value,
        k_cache_ptr=k_cache,
        v_cache_ptr=v_cache,
        slot_mapping_ptr=slot_mapping,
        key_stride_token=key.stride(0),
        key_stride_head=key.stride(1),
        value_stride_token=value.stride(0),
        value_stride_head=value.stride(1),
        cache_stride_slot=k_cache.stride(1),
        num_kv_heads=num_kv_heads,
        k_inv_scale=1.0 / k_scale,
        v_inv_scale=1.0 / v_scale,
        HEAD_DIM=head_dim,
        BLOCK_HEADS=triton.next_power_of_2(num_kv_heads),
        QUANTIZE=is_fp8(k_cache.dtype),
        PDL=pdl,
        EARLY=dependents_at_start(pdl, num_tokens),
        **launch_options(pdl),
    )
