"""Fused residual add + RMSNorm (Triton): one launch where torch runs about nine kernels.

One program normalizes one row: a token's hidden vector, or one head of one token for the Qwen3
per-head q/k norm ([num_tokens, num_heads, head_dim] normalized over head_dim). Rounding follows
`kernels.reference.rms_norm` step for step (the sum rounds to x's dtype, the norm runs in fp32
and rounds to x's dtype before the weight multiplies it; no FMA contraction), so only the order
in which the squares are summed differs from torch. `rms_norm_fp8` quantizes the output to FP8
in the same launch, one scale a token, for the FP8 GEMM it feeds (`kernels.fp8_quant`).
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from llm_worker.kernels.fp8_format import Fp8Activation
from llm_worker.kernels.fp8_quant import fp8_output, quantize_row
from llm_worker.kernels.pdl import dependents_at_start, launch_options, pdl_device
from llm_worker.kernels.torch_math import rsqrt_f32, use_libdevice

MAX_HIDDEN = 65536  # one row is held in registers; wider rows would spill
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [num_tokens, num_heads, hidden], last dim contiguous
    residual_ptr,  # [num_tokens, num_heads, hidden], last dim contiguous; gets x + residual
    weight_ptr,  # [hidden]
    out_ptr,  # [num_tokens, num_heads, hidden], contiguous (float8_e4m3fn with QUANT)
    scale_ptr,  # [num_tokens] fp32 (QUANT): each token's scale
    static_scale_ptr,  # [1] fp32 (QUANT and STATIC)
    x_stride_token,
    x_stride_head,
    residual_stride_token,
    residual_stride_head,
    hidden,
    inv_hidden,  # fp32 1 / hidden: torch's mean multiplies the sum by it
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    PDL: tl.constexpr,  # a programmatic dependent: the weight is read before the wait
    EARLY: tl.constexpr,  # with PDL: the next launch may start as this starts
    QUANT: tl.constexpr,  # the output as FP8, one scale a token (num_heads == 1)
    STATIC: tl.constexpr,  # with QUANT: the static scale, not the row's own
    NORMED_DTYPE: tl.constexpr,  # with QUANT: the dtype the unquantized output would have
):
    if PDL and EARLY:
        tl.extra.cuda.gdc_launch_dependents()
    token_idx = tl.program_id(0).to(tl.int64)
    head_idx = tl.program_id(1).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()
    summed = tl.load(x_ptr + token_idx * x_stride_token + head_idx * x_stride_head + offs,
                     mask=mask, other=0.0)  # fmt: skip
    if HAS_RESIDUAL:
        residual_row = residual_ptr + token_idx * residual_stride_token
        residual_row += head_idx * residual_stride_head
        residual = tl.load(residual_row + offs, mask=mask, other=0.0)
        summed = (summed.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(residual_row + offs, summed, mask=mask)
    h = summed.to(tl.float32)
    variance = tl.sum(h * h, axis=0) * inv_hidden
    normed = (h * rsqrt_f32(variance + eps, LIBDEVICE)).to(x_ptr.dtype.element_ty)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    out_row = out_ptr + (token_idx * tl.num_programs(1) + head_idx) * hidden
    if QUANT:
        normed_out = out.to(NORMED_DTYPE).to(tl.float32)  # as the plain norm would store it
        quantized, scale = quantize_row(normed_out, static_scale_ptr, STATIC, LIBDEVICE)
        tl.store(out_row + offs, quantized, mask=mask)
        tl.store(scale_ptr + token_idx, scale)
    else:
        tl.store(out_row + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    if x.dim() not in (2, 3) or x.dtype not in DTYPES:
        raise ValueError(
            f"x must be a float32/float16/bfloat16 [num_tokens, hidden] or [num_tokens, "
            f"num_heads, head_dim] tensor, got {x.dtype} {list(x.shape)}"
        )
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or weight.dtype not in DTYPES or weight.stride(0) != 1:
        raise ValueError(
            f"weight must be a contiguous float [{hidden}] tensor, got {weight.dtype} "
            f"{list(weight.shape)} strides {weight.stride()}"
        )
    if hidden > MAX_HIDDEN:
        raise ValueError(f"rows of {hidden} elements exceed the kernel's {MAX_HIDDEN}")
    if x.stride(-1) != 1:
        raise ValueError(f"x must be contiguous in its last dim, got strides {x.stride()}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if residual is None:
        return
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            f"residual must match x ({x.dtype} {list(x.shape)} on {x.device}), got "
            f"{residual.dtype} {list(residual.shape)} on {residual.device}"
        )
    if residual.stride(-1) != 1:
        raise ValueError(f"residual must be contiguous in its last dim, got {residual.stride()}")


def rms_norm(
    x: torch.Tensor,  # [num_tokens, hidden] or [num_tokens, num_heads, head_dim]
    weight: torch.Tensor,  # [hidden] (or [head_dim])
    eps: float,
    residual: torch.Tensor | None = None,  # shaped as x; overwritten with x + residual
    pdl: bool = False,  # a programmatic dependent of a kernel that does not write weight
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `kernels.reference.rms_norm`: returns (normed, new_residual).

    normed is a new contiguous tensor in the dtype torch promotes x and weight to. The new
    residual is x + residual written into `residual` in place (saves an allocation: callers pass
    each residual once), or x itself without one. Token and head strides of x and residual are
    free (a strided q/k view of the fused qkv output works); the last dim must be contiguous.
    """
    _check(x, weight, residual)
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    _launch(_Rows(x, weight, eps, residual), out, None, None, pdl)
    return out, (x if residual is None else residual)


def rms_norm_fp8(
    x: torch.Tensor,  # [num_tokens, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # shaped as x; overwritten with x + residual
    static_scale: torch.Tensor | None = None,  # [1] fp32: one scale for every token
    pdl: bool = False,  # a programmatic dependent of a kernel that does not write weight
) -> tuple[Fp8Activation, torch.Tensor]:
    """Same contract as `kernels.reference.rms_norm_fp8`: `rms_norm` whose output is quantized
    to FP8 in the same launch, one scale a token (absmax / 448, or the static scale)."""
    _check(x, weight, residual)
    if x.dim() != 2:
        raise ValueError(f"x must be [num_tokens, hidden] to quantize, got {list(x.shape)}")
    out = fp8_output(x.shape[0], x.shape[1], static_scale, x.device)
    _launch(_Rows(x, weight, eps, residual), out.data, out.scale, static_scale, pdl)
    return out, (x if residual is None else residual)


class _Rows(NamedTuple):
    x: torch.Tensor
    weight: torch.Tensor
    eps: float
    residual: torch.Tensor | None


def _launch(
    rows_in: _Rows,
    out: torch.Tensor,  # shaped as x: the normed rows, or their FP8 values with `scale`
    scale: torch.Tensor | None,  # [num_tokens, 1] fp32: quantize, writing each token's scale
    static_scale: torch.Tensor | None,
    pdl: bool,
) -> None:
    x, residual = rows_in.x, rows_in.residual
    rows = x if x.dim() == 3 else x.unsqueeze(1)  # [num_tokens, num_heads, hidden]
    res_rows = rows  # unread without a residual
    if residual is not None:
        res_rows = residual if residual.dim() == 3 else residual.unsqueeze(1)
    num_tokens, num_heads, hidden = rows.shape
    if num_tokens == 0 or num_heads == 0:
        return
    block = triton.next_power_of_2(hidden)
    pdl = pdl and pdl_device(x.device)
    normed_dtype = torch.promote_types(x.dtype, rows_in.weight.dtype)
    _rms_norm_kernel[(num_tokens, num_heads)](
        x_ptr=rows,
        residual_ptr=res_rows,
        weight_ptr=rows_in.weight,
        out_ptr=out,
        scale_ptr=out if scale is None else scale,
        static_scale_ptr=static_scale if static_scale is not None else out,
        x_stride_token=rows.stride(0),
        x_stride_head=rows.stride(1),
        residual_stride_token=res_rows.stride(0),
        residual_stride_head=res_rows.stride(1),
        hidden=hidden,
        inv_hidden=1.0 / hidden,
        eps=rows_in.eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        LIBDEVICE=use_libdevice(x),
        PDL=pdl,
        EARLY=dependents_at_start(pdl, num_tokens),
        QUANT=scale is not None,
        STATIC=static_scale is not None,
        NORMED_DTYPE=_TL_DTYPES[normed_dtype],
        num_warps=min(max(block // 512, 1), 16),
        enable_fp_fusion=False,
        **launch_options(pdl),
    )
