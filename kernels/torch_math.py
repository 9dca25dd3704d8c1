"""fp32 exp and rsqrt that round as torch's own CUDA kernels do, so fused kernels match them.

torch's elementwise kernels call CUDA's expf / rsqrtf, which are libdevice's __nv_expf /
__nv_rsqrtf; Triton's tl.exp lowers to a faster approximation that can differ in the last bits,
enough to flip a bf16 rounding now and then. The CPU interpreter has no libdevice, so launchers
pass LIBDEVICE=use_libdevice(tensor) and the interpreter gets Triton's own functions.
"""

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


def use_libdevice(tensor: torch.Tensor) -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4; older ones read the variable alone
    interpreting = knobs.runtime.interpret if knobs else os.environ.get("TRITON_INTERPRET") == "1"
    return tensor.is_cuda and not interpreting


@triton.jit
def exp_f32(x, LIBDEVICE: tl.constexpr):
    return libdevice.exp(x) if LIBDEVICE else tl.exp(x)


@triton.jit
def rsqrt_f32(x, LIBDEVICE: tl.constexpr):
    return libdevice.rsqrt(x) if LIBDEVICE else tl.math.rsqrt(x)
