"""FP8 e4m3 (torch.float8_e4m3fn, Triton's float8e4nv): its range, and the pair an FP8 GEMM takes.

Activations are quantized symmetrically, one scale a row (a token): scale = absmax / 448, values
x / scale rounded to the nearest e4m3 number (ties to even). Imports no Triton.
"""

from typing import NamedTuple

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
# A row of zeros still gets a positive scale, so that x / scale stays finite.
FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)


class Fp8Activation(NamedTuple):
    """An activation quantized for an FP8 GEMM: data * scale approximates it row by row."""

    data: torch.Tensor  # [num_tokens, hidden] float8_e4m3fn, contiguous
    scale: torch.Tensor  # [num_tokens, 1] float32, contiguous
