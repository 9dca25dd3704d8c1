"""silu(gate) * up from the fused gate|up projection output, in one launch (Triton).

Rounds as `kernels.reference.silu_and_mul` does on CUDA: silu in fp32 (libdevice exp, IEEE
division, as torch's kernel), rounded to the input dtype, then the product rounded again.
`silu_and_mul_fp8` quantizes the product to FP8 in the same launch, one scale a token, for the
FP8 down projection (`kernels.fp8_quant`); one program holds a token's whole row for its absmax.
"""

import torch
import triton
import triton.language as tl

from llm_worker.kernels.fp8_format import Fp8Activation
from llm_worker.kernels.fp8_quant import fp8_output, quantize_row
from llm_worker.kernels.pdl import launch_options, pdl_device
from llm_worker.kernels.torch_math import exp_f32, use_libdevice

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK = 1024


@triton.jit
def _silu_mul(gate_row, offs, mask, intermediate, LIBDEVICE: tl.constexpr):
    """fp32 silu(gate) * up at `offs` of one token's gate|up row, silu rounded to the input
    dtype first; the caller rounds the product."""
    gate = tl.load(gate_row + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_row + intermediate + offs, mask=mask, other=0.0)
    silu = tl.math.div_rn(gate, 1.0 + exp_f32(-gate, LIBDEVICE)).to(up.dtype)
    return silu.to(tl.float32) * up.to(tl.float32)


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,  # [num_tokens, 2 * intermediate], last dim contiguous: gate | up
    out_ptr,  # [num_tokens, intermediate], contiguous
    gate_up_stride_token,
    intermediate,
    BLOCK: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    PDL: tl.constexpr,  # a programmatic dependent: everything it reads comes after the wait
):
    if PDL:
        tl.extra.cuda.gdc_wait()
    token_idx = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < intermediate
    gate_row = gate_up_ptr + token_idx * gate_up_stride_token
    out = _silu_mul(gate_row, offs, mask, intermediate, LIBDEVICE)
    out_row = out_ptr + token_idx * intermediate
    tl.store(out_row + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_and_mul_fp8_kernel(
    gate_up_ptr,  # [num_tokens, 2 * intermediate], last dim contiguous: gate | up
    out_ptr,  # [num_tokens, intermediate] float8_e4m3fn, contiguous
    scale_ptr,  # [num_tokens] fp32: each token's scale
    static_scale_ptr,  # [1] fp32 (STATIC)
    gate_up_stride_token,
    intermediate,
    BLOCK: tl.constexpr,  # >= intermediate
    LIBDEVICE: tl.constexpr,
    STATIC: tl.constexpr,
    PDL: tl.constexpr,  # a programmatic dependent: everything it reads comes after the wait
):
    if PDL:
        tl.extra.cuda.gdc_wait()
    token_idx = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < intermediate
    gate_row = gate_up_ptr + token_idx * gate_up_stride_token
    product = _silu_mul(gate_row, offs, mask, intermediate, LIBDEVICE)
    product = product.to(gate_up_ptr.dtype.element_ty).to(tl.float32)  # as silu_and_mul stores it
    quantized, scale = quantize_row(product, static_scale_ptr, STATIC, LIBDEVICE)
    tl.store(out_ptr + token_idx * intermediate + offs, quantized, mask=mask)
    tl.store(scale_ptr + token_idx, scale)


def _check(gate_up: torch.Tensor) -> None:
    if gate_up.dim() != 2 or gate_up.shape[1] % 2 or gate_up.dtype not in DTYPES:
        raise ValueError(
            f"gate_up must be a float32/float16/bfloat16 [num_tokens, 2 * intermediate] tensor, "
            f"got {gate_up.dtype} {list(gate_up.shape)}"
        )
    if gate_up.stride(1) != 1:
        raise ValueError(f"gate_up must be contiguous in its last dim, got {gate_up.stride()}")


def silu_and_mul(
    gate_up: torch.Tensor,  # [num_tokens, 2 * intermediate]: gate in the first half, up after
    pdl: bool = False,  # launched as a programmatic dependent (`kernels.pdl`)
) -> torch.Tensor:  # [num_tokens, intermediate], contiguous
    """Same contract as `kernels.reference.silu_and_mul`; the row stride is free."""
    _check(gate_up)
    num_tokens, intermediate = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(num_tokens, intermediate, dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens == 0 or intermediate == 0:
        return out
    pdl = pdl and pdl_device(gate_up.device)
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(intermediate, BLOCK))](
        gate_up_ptr=gate_up,
        out_ptr=out,
        gate_up_stride_token=gate_up.stride(0),
        intermediate=intermediate,
        BLOCK=BLOCK,
        LIBDEVICE=use_libdevice(gate_up),
        PDL=pdl,
        num_warps=4,
        enable_fp_fusion=False,
        **launch_options(pdl),
    )
    return out


def silu_and_mul_fp8(
    gate_up: torch.Tensor,  # [num_tokens, 2 * intermediate]: gate in the first half, up after
    static_scale: torch.Tensor | None = None,  # [1] fp32: one scale for every token
    pdl: bool = False,  # launched as a programmatic dependent (`kernels.pdl`)
) -> Fp8Activation:  # [num_tokens, intermediate] e4m3 and [num_tokens, 1] fp32 scales
    """Same contract as `kernels.reference.silu_and_mul_fp8`; the row stride is free."""
    _check(gate_up)
    num_tokens, intermediate = gate_up.shape[0], gate_up.shape[1] // 2
    out = fp8_output(num_tokens, intermediate, static_scale, gate_up.device)
    if num_tokens == 0 or intermediate == 0:
        return out
    block = triton.next_power_of_2(intermediate)
    pdl = pdl and pdl_device(gate_up.device)
    _silu_and_mul_fp8_kernel[(num_tokens,)](
        gate_up_ptr=gate_up,
        out_ptr=out.data,
        scale_ptr=out.scale,
        static_scale_ptr=out.scale if static_scale is None else static_scale,
        gate_up_stride_token=gate_up.stride(0),
        intermediate=intermediate,
        BLOCK=block,
        LIBDEVICE=use_libdevice(gate_up),
        STATIC=static_scale is not None,
        PDL=pdl,
        num_warps=min(max(block // 512, 1), 16),
        enable_fp_fusion=False,
        **launch_options(pdl),
    )
    return out
