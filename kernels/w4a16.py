"""W4A16 GEMM (Triton): out = x @ W, W int4 with group-wise scales and zeros, dequantized in the
kernel; and the dequantization alone, for large batches that then multiply through cuBLAS.

Layout (`kernels.quant_reference`; AWQ and GPTQ checkpoints are repacked into it at load):
    qweight [K // 8, N] int32: bits 4j..4j+3 of qweight[i, n] hold q[8 i + j, n] in 0..15
    scales  [K // group, N] float16, zeros [K // group, N] uint8
    W[k, n] = (q[k, n] - zeros[k // group, n]) * scales[k // group, n]

Packing along K keeps a tile's loads coalesced along N, and a K tile never crosses a group
(BLOCK_K divides the group), so each tile reads one row of scales and zeros. Two kernels
(`kernels.w4a16_config` chooses): a CUDA-core GEMV for decode batches, which keeps the packed
[BLOCK_K // 8, BLOCK_N] tile as loaded, one nibble plane at a time, and applies the scale once a
tile per column; and a tensor-core (tl.dot) kernel for larger ones. Both split K across programs
when the grid is small: each writes an fp32 partial, and the last program of a tile to finish
adds the partials up in split order and writes the output (no second kernel, and the same bits
every run).
"""

import torch
import triton
import triton.language as tl

from llm_worker.kernels.w4a16_config import W4A16Config, choose_config

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# A nibble q or'ed into the mantissa of 2**23 (bits 0x4B000000) reads as the float 2**23 + q:
# the int-to-float conversion in one logic instruction; subtracting 2**23 + zero is exact.
FLOAT_2_POW_23_BITS = tl.constexpr(0x4B000000)


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
def _write_output(
    acc,  # [BLOCK_M, BLOCK_N] fp32: this program's sum over its K range
    out_ptr,  # [M, N] in x's dtype
    partials_ptr,  # [split_k, M, N] fp32 (unused with split_k 1)
    arrivals_ptr,  # [tiles] int32, zeroed: programs of each output tile that have finished
    offs_m,  # [BLOCK_M]
    offs_n,  # [BLOCK_N]
    M,
    N,
    tile_idx,  # this program's output tile
    split_idx,  # this program's K range
    split_k,
):
    """acc into out; split K, into this split's partial, then the last program of the tile to
    arrive sums all partials in split order (the same bits whatever order the programs ran in)."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    if split_k == 1:
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        split_size = M * N
        partial_ptr = partials_ptr + split_idx.to(tl.int64) * split_size
        tl.store(partial_ptr + offs, acc, mask=mask)
        # Every thread's partial is written before one thread's gpu-scope release (as in a grid
        # barrier); the acquire that finds the tile complete orders the reads after all of them.
        tl.debug_barrier()
        arrived = tl.atomic_add(arrivals_ptr + tile_idx, 1, sem="acq_rel", scope="gpu")
        if arrived == split_k - 1:
            total = tl.zeros_like(acc)
            split_ptrs = partials_ptr + offs
            for _ in range(split_k):
                total += tl.load(split_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
                split_ptrs += split_size
            tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr,  # [M, K], last dim contiguous
    qweight_ptr,  # [K // 8, N] int32
    scales_ptr,  # [K // GROUP, N] float16
    zeros_ptr,  # [K // GROUP, N] uint8
    out_ptr,  # [M, N] in x's dtype
    partials_ptr,  # [split_k, M, N] fp32 (unused with split_k 1)
    arrivals_ptr,  # [cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)] int32, zeroed
    M,
    N,
    K,
    x_stride_m,
    split_k,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[m, n] = sum_k x[m, k] W[k, n] on the CUDA cores, in fp32. A tile stays [BLOCK_K // 8,
    BLOCK_N] as loaded (no reshape, no shared memory): nibble plane j holds rows 8 i + j, and
    multiplies x[:, 8 i + j]. Within a tile (one group) sum_k x (q - zero) is exact-input, so the
    column's scale multiplies it once a tile rather than every weight."""
    pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    cols = offs_n.to(tl.int64)
    offs_p = tl.arange(0, BLOCK_K // 8)  # packed rows of a tile
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * x_stride_m  # [BLOCK_M, 1]
    acc = tl.zeros((BLOCK_M, BLOCK_K // 8, BLOCK_N), dtype=tl.float32)
    k_per_split = K // split_k
    for k0 in range(pid_k * k_per_split, (pid_k + 1) * k_per_split, BLOCK_K):
        packed_rows = (k0 // 8 + offs_p).to(tl.int64)
        packed = tl.load(qweight_ptr + packed_rows[:, None] * N + cols[None, :],
                         mask=n_mask[None, :], other=0)  # fmt: skip
        group_row = cols + (k0 // GROUP) * N
        scale = tl.load(scales_ptr + group_row, mask=n_mask, other=0.0).to(tl.float32)
        zero = tl.load(zeros_ptr + group_row, mask=n_mask, other=0).to(tl.int32)
        biased_zero = (zero | FLOAT_2_POW_23_BITS).to(tl.float32, bitcast=True)
        tile = tl.zeros((BLOCK_M, BLOCK_K // 8, BLOCK_N), dtype=tl.float32)
        for j in tl.static_range(8):
            nibble = ((packed >> (4 * j)) & 0xF) | FLOAT_2_POW_23_BITS
            w = nibble.to(tl.float32, bitcast=True) - biased_zero[None, :]  # q - zero, exactly
            x = tl.load(x_rows + (k0 + 8 * offs_p + j)[None, :], mask=m_mask[:, None], other=0.0)
            tile += x.to(tl.float32)[:, :, None] * w[None, :, :]
        acc += tile * scale[None, None, :]
    tile_idx = pid_m * tl.num_programs(0) + pid_n
    _write_output(tl.sum(acc, axis=1), out_ptr, partials_ptr, arrivals_ptr, offs_m, offs_n, M, N,
                  tile_idx, pid_k, split_k)  # fmt: skip


@triton.jit
def _w4a16_kernel(
    x_ptr,  # [M, K], last dim contiguous
    qweight_ptr,  # [K // 8, N] int32
    scales_ptr,  # [K // GROUP, N] float16
    zeros_ptr,  # [K // GROUP, N] uint8
    out_ptr,  # [M, N] in x's dtype
    partials_ptr,  # [split_k, M, N] fp32 (unused with split_k 1)
    arrivals_ptr,  # [cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)] int32, zeroed
    M,
    N,
    K,
    x_stride_m,
    split_k,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no tf32)
):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * x_stride_m
    k_per_split = K // split_k
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * k_per_split, (pid_k + 1) * k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None], other=0.0)
        w = _dequantize_tile(qweight_ptr, scales_ptr, zeros_ptr, k0, offs_n, n_mask, N,
                             GROUP, BLOCK_K, BLOCK_N)  # fmt: skip
        acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PRECISION)
    tile_idx = pid_m * tl.num_programs(1) + pid_n
    _write_output(acc, out_ptr, partials_ptr, arrivals_ptr, offs_m, offs_n, M, N, tile_idx, pid_k,
                  split_k)  # fmt: skip


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


def _check_config(cfg: W4A16Config, k: int, group: int) -> None:
    if group % cfg.block_k or cfg.block_k % 8 or (k // cfg.block_k) % cfg.split_k:
        raise ValueError(f"{cfg} does not tile K = {k} in groups of {group}")
    for size in (cfg.block_m, cfg.block_n, cfg.block_k):
        if size & (size - 1):
            raise ValueError(f"{cfg}: tile sizes must be powers of two")
    if not cfg.gemv and cfg.block_m < 16:
        raise ValueError(f"{cfg}: the tl.dot kernel needs block_m >= 16")


def w4a16_matmul(
    x: torch.Tensor,  # [M, K], last dim contiguous
    qweight: torch.Tensor,  # [K // 8, N] int32
    scales: torch.Tensor,  # [K // group, N] float16
    zeros: torch.Tensor,  # [K // group, N] uint8
    group: int,
    config: W4A16Config | None = None,  # default: choose_config for this shape and GPU
) -> torch.Tensor:  # [M, N] in x's dtype
    """Same contract as `kernels.quant_reference.int4_linear` without the bias. One kernel launch
    (and a memset of the split-K arrival counters): no host sync, CUDA-graph safe."""
    _check(qweight, scales, zeros, group)
    if x.dim() != 2 or x.dtype not in DTYPES or x.stride(1) != 1:
        raise ValueError(f"x must be a float [M, K] tensor contiguous in its last dim, got "
                         f"{x.dtype} {list(x.shape)} strides {x.stride()}")  # fmt: skip
    (m, k), n = x.shape, qweight.shape[1]
    if k != qweight.shape[0] * 8:
        raise ValueError(f"x has K = {k}, qweight {qweight.shape[0] * 8}")
    cfg = config or choose_config(m, n, k, group, _num_sms(x.device))
    _check_config(cfg, k, group)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out.zero_()
    num_m_tiles, num_n_tiles = triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n)
    if cfg.split_k > 1:
        arrivals = torch.zeros(num_m_tiles * num_n_tiles, dtype=torch.int32, device=x.device)
        partials = torch.empty(cfg.split_k, m, n, dtype=torch.float32, device=x.device)
    else:  # placeholders the kernel never touches
        arrivals = torch.empty(1, dtype=torch.int32, device=x.device)
        partials = torch.empty(1, dtype=torch.float32, device=x.device)
    args = dict(
        x_ptr=x, qweight_ptr=qweight, scales_ptr=scales, zeros_ptr=zeros, out_ptr=out,
        partials_ptr=partials, arrivals_ptr=arrivals, M=m, N=n, K=k, x_stride_m=x.stride(0),
        split_k=cfg.split_k, GROUP=group, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if cfg.gemv:
        _w4a16_gemv_kernel[(num_n_tiles, cfg.split_k, num_m_tiles)](**args)
    else:
        precision = "ieee" if x.dtype == torch.float32 else "tf32"
        _w4a16_kernel[(num_m_tiles, num_n_tiles, cfg.split_k)](**args, DOT_PRECISION=precision)
    return out


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
