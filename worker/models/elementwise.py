"""The elementwise work of a decoder layer (RMSNorm, rotary, SiLU*mul): torch or fused Triton.

The torch functions are the CPU path and the oracle. The `triton` backend swaps in one fused
kernel for each: unfused, they are about 30 small launches a layer, 2.9 ms of a 13.9 ms
Llama-3-8B decode step at batch 256 on the GPU profile of issue 5.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llm_worker.kernels import reference
from llm_worker.kernels.fp8_format import Fp8Activation

RMSNormFn = Callable[
    [torch.Tensor, torch.Tensor, float, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]
]
RotaryFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]
# The FP8-output variants take a static scale ([1] fp32) or None for one scale a token.
QuantizeFp8Fn = Callable[[torch.Tensor, torch.Tensor | None], Fp8Activation]
RMSNormFp8Fn = Callable[
    [torch.Tensor, torch.Tensor, float, torch.Tensor | None, torch.Tensor | None],
    tuple[Fp8Activation, torch.Tensor],
]
SiluAndMulFp8Fn = Callable[[torch.Tensor, torch.Tensor | None], Fp8Activation]


@dataclass(frozen=True)
class ElementwiseOps:
    """Each with the signature of its `kernels.reference` function. The fused ones may write in
    place (rotary rotates q and k; RMSNorm adds into the residual), so callers use what they
    return and pass each residual once."""

    name: str
    rms_norm: RMSNormFn
    rotary_embedding: RotaryFn
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]
    # The inputs of FP8 GEMMs: quantized on their own, or by the kernel that produces them.
    quantize_fp8: QuantizeFp8Fn
    rms_norm_fp8: RMSNormFp8Fn
    silu_and_mul_fp8: SiluAndMulFp8Fn


TORCH_OPS = ElementwiseOps(
    name="torch",
    rms_norm=reference.rms_norm,
    rotary_embedding=reference.rotary_embedding,
    silu_and_mul=reference.silu_and_mul,
    quantize_fp8=reference.quantize_fp8,
    rms_norm_fp8=reference.rms_norm_fp8,
    silu_and_mul_fp8=reference.silu_and_mul_fp8,
)


def triton_ops(pdl: bool = False) -> ElementwiseOps:
    """The fused kernels; imports triton, so only where the triton backend runs (CUDA, or the
    CPU interpreter in tests). `pdl`: launched as programmatic dependents where the GPU can
    (`kernels.pdl`); a layer's kernel before each writes none of weights, positions or cos/sin."""
    from llm_worker.kernels import triton_backend
    from llm_worker.kernels.fp8_quant import quantize_fp8
    from llm_worker.kernels.rms_norm import rms_norm_fp8
    from llm_worker.kernels.silu_mul import silu_and_mul_fp8

    return ElementwiseOps(
        name="triton",
        rms_norm=functools.partial(triton_backend.rms_norm, pdl=pdl),
        rotary_embedding=functools.partial(triton_backend.rotary_embedding, pdl=pdl),
        silu_and_mul=functools.partial(triton_backend.silu_and_mul, pdl=pdl),
        quantize_fp8=functools.partial(quantize_fp8, pdl=pdl),
        rms_norm_fp8=functools.partial(rms_norm_fp8, pdl=pdl),
        silu_and_mul_fp8=functools.partial(silu_and_mul_fp8, pdl=pdl),
    )
