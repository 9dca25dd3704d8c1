"""W4A16 GEMM (Triton): out = x @ W, W int4 with group-wise scales and zeros, dequantized in the
kernel; and the dequantization alone, for large batches that then multiply through cuBLAS.

Layout (`kernels.quant_reference`; AWQ and GPTQ checkpoints are repacked into it at load):
    qweight [K // 8, N] int32: bits 4j..4j+3 of qweight[i, n] hold q[8 i + j, n] in 0..15
    scales  [K // group, N] float16, zeros [K // group, N] uint8
    W[k, n] = (q[k, n] - zeros[k // group, n]) * scales[k // group, n]

Packing along K keeps a tile's loads coalesced along N, and a K tile never crosses a group
(BLOCK_K divides the group), so each tile reads one row of scales and zeros. Small batches are
memory-bound: their tiles are narrow (BLOCK_N 64) and K is split across programs (fp32 partial
sums, added after) until the grid covers the GPU about twice.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class W4A16Config:
    block_m: int
    block_n: int
    block_k: int  # divides the group size
    split_k: int  # divides K // block_k
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def _dequantize_tile(
    qweight_ptr,  # [K // 8, N] int32
    scales_ptr,  # [K // GROUP, N] float16
    zeros_ptr,  # [K // GROUP, N] uint8
    k0,  # first row of the tile, a multiple of BLOCK_K
    offs_n,  # [BLOCK_N] int32
    n_mask,  # [BLOCK_N]
    N,
    GROUP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """W[k0 : k0 + BLOCK_K, offs_n] as fp32 (masked columns 0)."""
    cols = offs_n.to(tl.int64)
    packed_rows = (k0 // 8 + tl.arange(0, BLOCK_K // 8)).to(tl.int64)
    packed = tl.load(qweight_ptr + packed_rows[:, None] * N + cols[None, :],
                     mask=n_mask[None, :], other=0)  # fmt: skip
    shifts = tl.arange(0, 8) * 4
    q = tl.reshape((packed[:, None, :] >> shifts[None, :, None]) & 0xF, (BLOCK_K, BLOCK_N))
    group_row = cols + (k0 // GROUP) * N
    scale = tl.load(scales_ptr + group_row, mask=n_mask, other=0.0).to(tl.float32)
    zero = tl.load(zeros_ptr + group_row, mask=n_mask, other=0).to(tl.int32)
    return (q - zero[None, :]).to(tl.float32) * scale[None, :]


@triton.jit
def _w4a16_kernel(
    x_ptr,  # [M, K], last dim contiguous
    qweight_ptr,  # [K // 8, N] int32
    scales_ptr,  # [K // GROUP, N] float16
    zeros_ptr,  # [K // GROUP, N] uint8
    out_ptr,  # [SPLIT_K, M, N]: fp32 partial sums, or [M, N] in x's dtype with SPLIT_K 1
    M,
    N,
    K,
    x_stride_m,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no tf32)
):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * x_stride_m
    k_per_split = K // SPLIT_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * k_per_split, (pid_k + 1) * k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None], other=0.0)
        w = _dequantize_tile(qweight_ptr, scales_ptr, zeros_ptr, k0, offs_n, n_mask, N,
                             GROUP, BLOCK_K, BLOCK_N)  # fmt: skip
        acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PRECISION)
    out_offs = (pid_k * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])  # fmt: skip


@triton.jit
def _dequantize_int4_kernel(
    qweight_ptr,  # [K // 8, N] int32
    scales_ptr,  # [K // GROUP, N] float16
    zeros_ptr,  # [K // GROUP, N] uint8
    out_ptr,  # [K, N], contiguous
    N,
    GROUP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    k0 = tl.program_id(0) * BLOCK_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w = _dequantize_tile(qweight_ptr, scales_ptr, zeros_ptr, k0, offs_n, n_mask, N,
                         GROUP, BLOCK_K, BLOCK_N)  # fmt: skip
    rows = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
    tl.store(out_ptr + rows[:, None] * N + offs_n[None, :], w.to(out_ptr.dtype.element_ty),
             mask=n_mask[None, :])  # fmt: skip


def _check(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int) -> None:
    if qweight.dim() != 2 or qweight.dtype != torch.int32 or not qweight.is_contiguous():
        raise ValueError(f"qweight must be a contiguous int32 [K // 8, N] tensor, got "
                         f"{qweight.dtype} {list(qweight.shape)}")  # fmt: skip
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if group % 32 or k % group:
        raise ValueError(f"the group size ({group}) must be a multiple of 32 dividing K ({k})")
    want = (k // group, n)
    if scales.shape != want or scales.dtype != torch.float16 or not scales.is_contiguous():
        raise ValueError(f"scales must be contiguous float16 {list(want)}, got {scales.dtype} "
                         f"{list(scales.shape)}")  # fmt: skip
    if zeros.shape != want or zeros.dtype != torch.uint8 or not zeros.is_contiguous():
        raise ValueError(f"zeros must be contiguous uint8 {list(want)}, got {zeros.dtype} "
                         f"{list(zeros.shape)}")  # fmt: skip


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_config(m: int, n: int, k: int, group: int, num_sms: int) -> W4A16Config:
    """Narrow tiles and split K for small batches (memory-bound: fill the GPU); square tiles,
    no split, once the batch is large enough to be bound by the tensor cores."""
    block_k = min(group, 128)
    if m <= 64:
        block_m = max(16, triton.next_power_of_2(m))
        block_n = 64
    else:
        block_m, block_n = 128, 128
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split_k, num_k_tiles = 1, k // block_k
    while tiles * split_k * 2 <= 2 * num_sms and num_k_tiles % (split_k * 2) == 0:
        if num_k_tiles // (split_k * 2) < 4:  # keep a few tiles per program to pipeline
            break
        split_k *= 2
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    return W4A16Config(block_m, block_n, block_k, split_k, num_warps)


def w4a16_matmul(
    x: torch.Tensor,  # [M, K], last dim contiguous
    qweight: torch.Tensor,  # [K // 8, N] int32
    scales: torch.Tensor,  # [K // group, N] float16
    zeros: torch.Tensor,  # [K // group, N] uint8
    group: int,
    config: W4A16Config | None = None,  # default: choose_config for this shape and GPU
) -> torch.Tensor:  # [M, N] in x's dtype
    """Same contract as `kernels.quant_reference.int4_linear` without the bias."""
    _check(qweight, scales, zeros, group)
    if x.dim() != 2 or x.dtype not in DTYPES or x.stride(1) != 1:
        raise ValueError(f"x must be a float [M, K] tensor contiguous in its last dim, got "
                         f"{x.dtype} {list(x.shape)} strides {x.stride()}")  # fmt: skip
    (m, k), n = x.shape, qweight.shape[1]
    if k != qweight.shape[0] * 8:
        raise ValueError(f"x has K = {k}, qweight {qweight.shape[0] * 8}")
    cfg = config or choose_config(m, n, k, group, _num_sms(x.device))
    if group % cfg.block_k or (k // cfg.block_k) % cfg.split_k:
        raise ValueError(f"{cfg} does not tile K = {k} in groups of {group}")
    out_dtype = x.dtype if cfg.split_k == 1 else torch.float32
    out = torch.empty(cfg.split_k, m, n, dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return out.sum(0).to(x.dtype)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), cfg.split_k)
    _w4a16_kernel[grid](
        x_ptr=x, qweight_ptr=qweight, scales_ptr=scales, zeros_ptr=zeros, out_ptr=out,
        M=m, N=n, K=k, x_stride_m=x.stride(0), GROUP=group,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out[0] if cfg.split_k == 1 else out.sum(0).to(x.dtype)


def dequantize_int4(
    qweight: torch.Tensor,  # [K // 8, N] int32
    scales: torch.Tensor,  # [K // group, N] float16
    zeros: torch.Tensor,  # [K // group, N] uint8
    group: int,
    dtype: torch.dtype,
) -> torch.Tensor:  # [K, N] in dtype
    """Same values as `kernels.quant_reference.dequantize_int4`, rounded to `dtype`."""
    _check(qweight, scales, zeros, group)
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    out = torch.empty(k, n, dtype=dtype, device=qweight.device)
    block_k, block_n = min(group, 64), 64
    _dequantize_int4_kernel[(k // block_k, triton.cdiv(n, block_n))](
        qweight_ptr=qweight, scales_ptr=scales, zeros_ptr=zeros, out_ptr=out, N=n,
        GROUP=group, BLOCK_K=block_k, BLOCK_N=block_n, num_warps=4,
    )  # fmt: skip
    return out
