"""The quantized GEMMs of a backend: `torch` dequantizes and multiplies in fp32 (the CPU path,
and the oracle the kernels are tested against); `triton` runs FP8 on the tensor cores
(torch._scaled_mm) and the Triton W4A16 and block-FP8 kernels."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llm_worker.kernels import quant_reference
from llm_worker.kernels.fp8_format import Fp8Activation

Fp8LinearFn = Callable[
    [Fp8Activation, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.dtype], torch.Tensor
]
BlockFp8LinearFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int], torch.Tensor | None],
    torch.Tensor,
]
Int4LinearFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor | None],
    torch.Tensor,
]
# Batches of at least this many tokens dequantize an int4 weight to the activation dtype and
# multiply through cuBLAS (tensor-core bound there, where the W4A16 kernel's tiles are not tuned);
# smaller ones run the W4A16 kernel. To be set from scripts/bench_quant.py's GEMM table.
INT4_DEQUANTIZE_MIN_TOKENS = 128


@dataclass(frozen=True)
class QuantGemms:
    """Each with the signature of its `kernels.quant_reference` function."""

    name: str
    fp8_linear: Fp8LinearFn
    block_fp8_linear: BlockFp8LinearFn
    int4_linear: Int4LinearFn


TORCH_GEMMS = QuantGemms(
    name="torch",
    fp8_linear=quant_reference.fp8_linear,
    block_fp8_linear=quant_reference.block_fp8_linear,
    int4_linear=quant_reference.int4_linear,
)


def scaled_mm_fp8_linear(
    a: Fp8Activation,  # [M, K] e4m3 and [M, 1] fp32
    w: torch.Tensor,  # [N, K] float8_e4m3fn
    w_scale: torch.Tensor,  # [N] fp32
    bias: torch.Tensor | None,  # [N]
    out_dtype: torch.dtype,
) -> torch.Tensor:  # [M, N]
    """torch._scaled_mm with a scale per token and per output channel, bf16 out (what its
    rowwise scaling produces). torch 2.11 on the CPU takes one scale per tensor only: there the
    reference computes it."""
    if not a.data.is_cuda:
        return quant_reference.fp8_linear(a, w, w_scale, bias, out_dtype)
    fused_bias = bias if out_dtype == torch.bfloat16 else None
    out = torch._scaled_mm(
        a.data, w.t(), scale_a=a.scale, scale_b=w_scale.view(1, -1), bias=fused_bias,
        out_dtype=torch.bfloat16,
    )  # fmt: skip
    if out_dtype != torch.bfloat16:
        out = out.to(out_dtype)
        if bias is not None:
            out += bias
    return out


def triton_int4_linear(
    x: torch.Tensor,  # [M, K]
    qweight: torch.Tensor,  # [K // 8, N] int32
    scales: torch.Tensor,  # [K // group, N] float16
    zeros: torch.Tensor,  # [K // group, N] uint8
    group: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:  # [M, N] in x's dtype
    from llm_worker.kernels.w4a16 import dequantize_int4, w4a16_matmul

    if x.shape[0] >= INT4_DEQUANTIZE_MIN_TOKENS:
        out = x @ dequantize_int4(qweight, scales, zeros, group, x.dtype)
    else:
        out = w4a16_matmul(x, qweight, scales, zeros, group)
    if bias is not None:
        out += bias
    return out


def triton_block_fp8_linear(
    x: torch.Tensor,  # [M, K]
    w: torch.Tensor,  # [N, K] float8_e4m3fn
    w_scale: torch.Tensor,  # [cdiv(N, block[0]), cdiv(K, block[1])] fp32
    block: tuple[int, int],
    bias: torch.Tensor | None,
) -> torch.Tensor:  # [M, N] in x's dtype
    from llm_worker.kernels.block_fp8_gemm import block_fp8_matmul

    out = block_fp8_matmul(x, w, w_scale, block)
    if bias is not None:
        out += bias
    return out


KERNEL_GEMMS = QuantGemms(
    name="triton",
    fp8_linear=scaled_mm_fp8_linear,
    block_fp8_linear=triton_block_fp8_linear,
    int4_linear=triton_int4_linear,
)


def gemms_for(backend_name: str) -> QuantGemms:
    return KERNEL_GEMMS if backend_name == "triton" else TORCH_GEMMS
