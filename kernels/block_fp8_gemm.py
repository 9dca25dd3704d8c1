"""Block-scaled FP8 GEMM (Triton): out = x @ W.T for W in e4m3 with one scale per 128 x 128
block (DeepSeek-V3 / Qwen3-FP8 checkpoints, `weight_block_size` [128, 128]).

The activation comes in its own dtype and is quantized inside the kernel, per token and 128-wide
slice of K, as `kernels.quant_reference.block_fp8_linear` does: each K step of a tile loads
x[BLOCK_M, 128], takes each row's absmax, and multiplies FP8 by FP8 on the tensor cores with
the two scales applied to the step's fp32 product. Every N tile quantizes the same x slices
again; that is elementwise work on BLOCK_M x 128 values against a BLOCK_M x 128 x BLOCK_N dot,
and it saves a launch and a round trip of the activation through memory.

torch._scaled_mm takes these scales only on some torch builds and GPUs (the 1x128 by 128x128
recipe of torch >= 2.9 on sm90 with a recent cuBLAS), so one Triton kernel serves everywhere.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_worker.kernels.fp8_format import FP8_DTYPE
from llm_worker.kernels.fp8_quant import fp8_scale, to_fp8
from llm_worker.kernels.torch_math import use_libdevice

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class BlockFp8Config:
    block_m: int
    block_n: int  # divides the weight block's rows (128), so a tile reads one row of scales
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def _block_fp8_kernel(
    x_ptr,  # [M, K], last dim contiguous
    w_ptr,  # [N, K] float8_e4m3fn, contiguous
    w_scale_ptr,  # [cdiv(N, QUANT_N), cdiv(K, QUANT_K)] fp32, contiguous
    out_ptr,  # [M, N] in x's dtype, contiguous
    M,
    N,
    K,
    x_stride_m,
    QUANT_N: tl.constexpr,  # the weight block: QUANT_N rows by QUANT_K columns
    QUANT_K: tl.constexpr,  # also the activation's group, and the K step
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NATIVE_CAST: tl.constexpr,  # the GPU's fp32 -> e4m3 conversion (`kernels.fp8_quant`)
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * x_stride_m
    w_cols = w_ptr + offs_n[None, :].to(tl.int64) * K
    num_k_blocks = tl.cdiv(K, QUANT_K)
    w_scale_row = w_scale_ptr + (pid_n * BLOCK_N // QUANT_N) * num_k_blocks
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_block in range(0, num_k_blocks):
        offs_k = k_block * QUANT_K + tl.arange(0, QUANT_K)
        k_mask = offs_k < K
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        x = x.to(tl.float32)
        x_scale = fp8_scale(tl.max(tl.abs(x), axis=1))  # [BLOCK_M]
        x_fp8 = to_fp8(x, x_scale[:, None], NATIVE_CAST)
        w = tl.load(w_cols + offs_k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        w_scale = tl.load(w_scale_row + k_block)
        acc += tl.dot(x_fp8, w) * (x_scale[:, None] * w_scale)
    out_offs = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])  # fmt: skip


def choose_config(m: int) -> BlockFp8Config:
    if m <= 16:
        return BlockFp8Config(block_m=16, block_n=64)
    if m <= 64:
        return BlockFp8Config(block_m=64, block_n=64)
    return BlockFp8Config(block_m=128, block_n=128, num_warps=8)


def block_fp8_matmul(
    x: torch.Tensor,  # [M, K], last dim contiguous
    w: torch.Tensor,  # [N, K] float8_e4m3fn, contiguous
    w_scale: torch.Tensor,  # [cdiv(N, 128), cdiv(K, 128)] fp32, contiguous
    block: tuple[int, int] = (128, 128),  # the weight block (rows of N, columns of K)
    config: BlockFp8Config | None = None,
) -> torch.Tensor:  # [M, N] in x's dtype
    """Same contract as `kernels.quant_reference.block_fp8_linear` without the bias."""
    if x.dim() != 2 or x.dtype not in DTYPES or x.stride(1) != 1:
        raise ValueError(f"x must be a float [M, K] tensor contiguous in its last dim, got "
                         f"{x.dtype} {list(x.shape)} strides {x.stride()}")  # fmt: skip
    if w.dim() != 2 or w.dtype != FP8_DTYPE or not w.is_contiguous() or w.shape[1] != x.shape[1]:
        raise ValueError(f"w must be a contiguous float8_e4m3fn [N, {x.shape[1]}] tensor, got "
                         f"{w.dtype} {list(w.shape)}")  # fmt: skip
    (m, k), n = x.shape, w.shape[0]
    block_n, block_k = block
    want = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    if w_scale.shape != want or w_scale.dtype != torch.float32 or not w_scale.is_contiguous():
        raise ValueError(f"w_scale must be contiguous float32 {list(want)}, got "
                         f"{w_scale.dtype} {list(w_scale.shape)}")  # fmt: skip
    cfg = config or choose_config(m)
    if block_n % cfg.block_n:
        raise ValueError(f"BLOCK_N {cfg.block_n} must divide the weight block's {block_n} rows")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n))
    _block_fp8_kernel[grid](
        x_ptr=x, w_ptr=w, w_scale_ptr=w_scale, out_ptr=out, M=m, N=n, K=k,
        x_stride_m=x.stride(0), QUANT_N=block_n, QUANT_K=block_k,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, NATIVE_CAST=use_libdevice(x),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out
