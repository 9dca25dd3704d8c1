"""Per-token FP8 quantization (Triton), and the jit helpers the fused RMSNorm and SiLU*mul reuse.

Each program quantizes one row held whole in registers, as `kernels.reference.quantize_fp8`
does: scale = max(absmax / 448, FP8_MIN_SCALE) (or a static scale), values x / scale clamped to
+-448 and rounded to e4m3, ties to even. Divisions are IEEE (div_rn) like torch's, so the
kernel matches the reference to the bit.

The CPU interpreter (triton 3.6) rounds fp32 -> fp8 wrongly: it rounds half up on the mantissa
and drops the carry into the exponent (124.5 becomes 64, not 128). Where it runs, values are
first rounded onto e4m3's grid in fp32 arithmetic, which the cast then keeps exactly.
"""

import torch
import triton
import triton.language as tl

from llm_worker.kernels.fp8_format import FP8_DTYPE, FP8_MAX, FP8_MIN_SCALE, Fp8Activation
from llm_worker.kernels.pdl import launch_options, pdl_device
from llm_worker.kernels.torch_math import use_libdevice

MAX_HIDDEN = 65536  # one row is held in registers
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FP8_MAX = tl.constexpr(FP8_MAX)
_FP8_MIN_SCALE = tl.constexpr(FP8_MIN_SCALE)
# 1.5 * 2**23: adding it to an fp32 of magnitude under 2**22 rounds it to an integer, ties to even.
_ROUNDING_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def _round_to_e4m3_grid(x):
    """x in [-448, 448] rounded to the nearest e4m3 number (ties to even), still fp32: the
    grid's spacing is 2^(e - 3) for a binary exponent e >= -6 and 2^-9 below (subnormals)."""
    bits = x.to(tl.int32, bitcast=True)
    spacing_exponent = tl.maximum((bits >> 23) & 0xFF, 127 - 6) - 3  # biased
    spacing = (spacing_exponent << 23).to(tl.float32, bitcast=True)
    rounded = ((x / spacing + _ROUNDING_MAGIC) - _ROUNDING_MAGIC) * spacing
    sign = (bits >> 31) << 31  # a negative number that rounds to zero stays -0.0, as in torch
    return (rounded.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def fp8_scale(absmax):
    """The dequantization scale of a row whose largest magnitude is `absmax` (fp32)."""
    return tl.maximum(tl.math.div_rn(absmax, _FP8_MAX), _FP8_MIN_SCALE)


@triton.jit
def to_fp8(x, scale, NATIVE_CAST: tl.constexpr):
    """x / scale as e4m3 (x fp32, scale broadcastable to it). NATIVE_CAST: the GPU's own
    round-to-nearest-even conversion; without it (the interpreter) the grid rounding above."""
    scaled = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -_FP8_MAX), _FP8_MAX)
    if not NATIVE_CAST:
        scaled = _round_to_e4m3_grid(scaled)
    return scaled.to(tl.float8e4nv, fp_downcast_rounding="rtne")


@triton.jit
def quantize_row(
    values,  # [BLOCK] fp32, masked lanes 0
    static_scale_ptr,  # [1] fp32, read only with STATIC
    STATIC: tl.constexpr,
    NATIVE_CAST: tl.constexpr,
):
    """(e4m3 values, scale) of one row: its own absmax scale, or the static one."""
    scale = tl.load(static_scale_ptr) if STATIC else fp8_scale(tl.max(tl.abs(values), axis=0))
    return to_fp8(values, scale, NATIVE_CAST), scale


@triton.jit
def _quantize_fp8_kernel(
    x_ptr,  # [num_tokens, hidden], last dim contiguous
    out_ptr,  # [num_tokens, hidden] float8_e4m3fn, contiguous
    scale_ptr,  # [num_tokens] fp32: each row's scale
    static_scale_ptr,  # [1] fp32 (STATIC)
    x_stride_token,
    hidden,
    BLOCK: tl.constexpr,
    STATIC: tl.constexpr,
    NATIVE_CAST: tl.constexpr,
    PDL: tl.constexpr,  # a programmatic dependent: everything it reads comes after the wait
):
    if PDL:
        tl.extra.cuda.gdc_wait()
    token_idx = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(x_ptr + token_idx * x_stride_token + offs, mask=mask, other=0.0).to(tl.float32)
    quantized, scale = quantize_row(x, static_scale_ptr, STATIC, NATIVE_CAST)
    tl.store(out_ptr + token_idx * hidden + offs, quantized, mask=mask)
    tl.store(scale_ptr + token_idx, scale)


def check_static_scale(static_scale: torch.Tensor | None, device: torch.device) -> None:
    if static_scale is None:
        return
    if static_scale.shape != (1,) or static_scale.dtype != torch.float32:
        raise ValueError(
            f"static_scale must be a float32 [1] tensor, got {static_scale.dtype} "
            f"{list(static_scale.shape)}"
        )
    if static_scale.device != device:
        raise ValueError(f"static_scale is on {static_scale.device}, the input on {device}")


def fp8_output(
    num_tokens: int, width: int, static_scale: torch.Tensor | None, device: torch.device
) -> Fp8Activation:
    """The output of a launch that quantizes rows of `width` whole in registers, once its
    width and static scale are checked."""
    if width > MAX_HIDDEN:
        raise ValueError(f"rows of {width} elements exceed the kernel's {MAX_HIDDEN}")
    check_static_scale(static_scale, device)
    return Fp8Activation(
        torch.empty(num_tokens, width, dtype=FP8_DTYPE, device=device),
        torch.empty(num_tokens, 1, dtype=torch.float32, device=device),
    )


def quantize_fp8(
    x: torch.Tensor,  # [num_tokens, hidden], last dim contiguous
    static_scale: torch.Tensor | None = None,  # [1] fp32: one scale for every row
    pdl: bool = False,  # launched as a programmatic dependent (`kernels.pdl`)
) -> Fp8Activation:
    """Same contract as `kernels.reference.quantize_fp8`: per-row scales, or the static one
    copied to every row."""
    if x.dim() != 2 or x.dtype not in DTYPES or x.stride(1) != 1:
        raise ValueError(
            f"x must be a float32/float16/bfloat16 [num_tokens, hidden] tensor contiguous in its "
            f"last dim, got {x.dtype} {list(x.shape)} strides {x.stride()}"
        )
    num_tokens, hidden = x.shape
    out = fp8_output(num_tokens, hidden, static_scale, x.device)
    if num_tokens == 0 or hidden == 0:
        return out
    block = triton.next_power_of_2(hidden)
    pdl = pdl and pdl_device(x.device)
    _quantize_fp8_kernel[(num_tokens,)](
        x_ptr=x,
        out_ptr=out.data,
        scale_ptr=out.scale,
        static_scale_ptr=out.scale if static_scale is None else static_scale,
        x_stride_token=x.stride(0),
        hidden=hidden,
        BLOCK=block,
        STATIC=static_scale is not None,
        NATIVE_CAST=use_libdevice(x),
        PDL=pdl,
        num_warps=min(max(block // 512, 1), 16),
        **launch_options(pdl),
    )
    return out
