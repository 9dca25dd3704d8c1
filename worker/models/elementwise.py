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

RMSNormFn = Callable[
    [torch.Tensor, torch.Tensor, float, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]
]
RotaryFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]


@dataclass(frozen=True)
class ElementwiseOps:
    """Each with the signature of its `kernels.reference` function. The fused ones may write in
    place (rotary rotates q and k; RMSNorm adds into the residual), so callers use what they
    return and pass each residual once."""

    name: str
    rms_norm: RMSNormFn
    rotary_embedding: RotaryFn
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]


TORCH_OPS = ElementwiseOps(
    name="torch",
    rms_norm=reference.rms_norm,
    rotary_embedding=reference.rotary_embedding,
    silu_and_mul=reference.silu_and_mul,
)


def triton_ops(pdl: bool = False) -> ElementwiseOps:
    """The fused kernels; imports triton, so only where the triton backend runs (CUDA, or the
    CPU interpreter in tests). `pdl`: launched as programmatic dependents where the GPU can
    (`kernels.pdl`); a layer's kernel before each writes none of weights, positions or cos/sin."""
    from llm_worker.kernels import triton_backend

    return ElementwiseOps(
        name="triton",
        rms_norm=functools.partial(triton_backend.rms_norm, pdl=pdl),
        rotary_embedding=functools.partial(triton_backend.rotary_embedding, pdl=pdl),
        silu_and_mul=functools.partial(triton_backend.silu_and_mul, pdl=pdl),
    )
