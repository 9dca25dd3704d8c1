"""Building blocks shared by the Llama-family models."""

import math
from typing import Any

import torch
from torch import nn

from llm_worker.models.elementwise import ElementwiseOps


class RMSNorm(nn.Module):
    def __init__(
        self, hidden_size: int, eps: float, ops: ElementwiseOps, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.eps = eps
        self.ops = ops

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed, new residual); a fused norm adds x into `residual` in place."""
        return self.ops.rms_norm(x, self.weight, self.eps, residual)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths slowed by `factor`, short ones kept."""
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old_len / wavelen) - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_len / low, inv_freq / factor, blended)
    return torch.where(wavelen < old_len / high, inv_freq, out)


def rotary_cos_sin_cache(
    head_dim: int,
    max_position: int,
    theta: float,
    scaling: dict[str, Any] | None,
    device: torch.device,
) -> torch.Tensor:  # [max_position, head_dim] fp32: cos in [:half], sin in [half:]
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is not None:
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif kind == "linear":
            inv_freq = inv_freq / scaling["factor"]
        else:
            raise ValueError(f"rope scaling {kind!r} is not supported (default, linear, llama3)")
    positions = torch.arange(max_position, dtype=torch.int64).float()
    freqs = positions[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)
