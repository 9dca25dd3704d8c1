"""Pure-PyTorch oracles of the quantized GEMMs: dequantize, then multiply in fp32.

They are also the `torch` backend's quantized linear layers (the CPU path). Layouts:

    FP8 (per channel):  w [N, K] float8_e4m3fn, w_scale [N] fp32; activation (data, scale) per
                        token (`kernels.fp8_format.Fp8Activation`)
    FP8 (block-wise):   w [N, K] float8_e4m3fn, w_scale [cdiv(N, block_n), cdiv(K, block_k)]
                        fp32; activations quantized per token and block_k-wide group of K
    int4 (W4A16):       qweight [K // 8, N] int32 (bits 4j..4j+3 of row i: W[8 i + j, n]),
                        scales [K // group, N] float16, zeros [K // group, N] uint8;
                        W[k, n] = (q[k, n] - zeros[k // group, n]) * scales[k // group, n]
"""

import torch

from llm_worker.kernels.fp8_format import FP8_DTYPE, FP8_MAX, FP8_MIN_SCALE, Fp8Activation

INT4_PER_INT32 = 8


def fp8_linear(
    a: Fp8Activation,  # [M, K] e4m3 and [M, 1] fp32
    w: torch.Tensor,  # [N, K] float8_e4m3fn
    w_scale: torch.Tensor,  # [N] fp32
    bias: torch.Tensor | None,  # [N]
    out_dtype: torch.dtype,
) -> torch.Tensor:  # [M, N]
    x = a.data.float() * a.scale
    out = x @ (w.float() * w_scale[:, None]).T
    if bias is not None:
        out += bias.float()
    return out.to(out_dtype)


def quantize_fp8_groups(
    x: torch.Tensor,  # [M, K]
    group: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # [M, K] e4m3, [M, cdiv(K, group)] fp32
    """Per token and `group`-wide slice of K, symmetric e4m3 as `reference.quantize_fp8`."""
    num_tokens, k = x.shape
    num_groups = -(-k // group)
    padded = torch.zeros(num_tokens, num_groups * group, dtype=torch.float32, device=x.device)
    padded[:, :k] = x.float()
    groups = padded.view(num_tokens, num_groups, group)
    scale = (groups.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(min=FP8_MIN_SCALE)
    data = (groups / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return data.view(num_tokens, -1)[:, :k], scale.squeeze(-1)


def dequantize_block_fp8(
    w: torch.Tensor,  # [N, K] float8_e4m3fn
    w_scale: torch.Tensor,  # [cdiv(N, block_n), cdiv(K, block_k)] fp32
    block_n: int,
    block_k: int,
) -> torch.Tensor:  # [N, K] fp32
    n, k = w.shape
    scale = w_scale.float().repeat_interleave(block_n, 0)[:n].repeat_interleave(block_k, 1)[:, :k]
    return w.float() * scale


def block_fp8_linear(
    x: torch.Tensor,  # [M, K]
    w: torch.Tensor,  # [N, K] float8_e4m3fn
    w_scale: torch.Tensor,  # [cdiv(N, block_n), cdiv(K, block_k)] fp32
    block: tuple[int, int],  # (block_n, block_k)
    bias: torch.Tensor | None = None,  # [N]
) -> torch.Tensor:  # [M, N] in x's dtype
    block_n, block_k = block
    data, scale = quantize_fp8_groups(x, block_k)
    x_dequantized = data.float() * scale.repeat_interleave(block_k, 1)[:, : x.shape[1]]
    out = x_dequantized @ dequantize_block_fp8(w, w_scale, block_n, block_k).T
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)


def unpack_int4_rows(qweight: torch.Tensor) -> torch.Tensor:  # [K // 8, N] -> [K, N] int32
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device)
    nibbles = (qweight[:, None, :] >> shifts[None, :, None]) & 0xF  # [K // 8, 8, N]
    return nibbles.reshape(-1, qweight.shape[1])


def dequantize_int4(
    qweight: torch.Tensor,  # [K // 8, N] int32
    scales: torch.Tensor,  # [K // group, N] float16
    zeros: torch.Tensor,  # [K // group, N] uint8
    group: int,
) -> torch.Tensor:  # [K, N] fp32
    q = unpack_int4_rows(qweight)
    group_idx = torch.arange(q.shape[0], device=q.device) // group
    return (q - zeros[group_idx].to(torch.int32)).float() * scales[group_idx].float()


def int4_linear(
    x: torch.Tensor,  # [M, K]
    qweight: torch.Tensor,  # [K // 8, N] int32
    scales: torch.Tensor,  # [K // group, N] float16
    zeros: torch.Tensor,  # [K // group, N] uint8
    group: int,
    bias: torch.Tensor | None = None,  # [N]
) -> torch.Tensor:  # [M, N] in x's dtype
    out = x.float() @ dequantize_int4(qweight, scales, zeros, group)
    if bias is not None:
        out += bias.float()
    return out.to(x.dtype)
