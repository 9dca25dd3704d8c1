"""Launch configuration of the W4A16 GEMM (`kernels.w4a16`): which kernel, its tiles, warps,
pipeline stages and split-K factor, from the shape and the GPU's multiprocessor count alone (never
from tensor contents), so a CUDA graph captured at one batch size keeps one configuration.

Decode batches (M <= GEMV_MAX_M) run the GEMV kernel: memory-bound, every weight read once, each
program streaming a BLOCK_N-wide column slice of one K range and multiplying on the CUDA cores.
Its per-thread registers grow with BLOCK_M * BLOCK_K * BLOCK_N, so BLOCK_K shrinks as the batch
grows; K is split until the grid holds PROGRAMS_PER_SM programs a multiprocessor. Larger batches
run the tensor-core (tl.dot) kernel: narrow tiles and split-K up to 64 rows, square tiles beyond.
`scripts/bench_quant.py --sweep-w4a16` times the alternatives at every shape.
"""

from dataclasses import dataclass

# Up to this many rows the CUDA-core GEMV beats tensor-core tiles padded to 16 rows: per weight it
# costs a shift, a mask, a subtraction and one FMA a row against about 5 instructions of memory
# time per weight at the copy bandwidth.
GEMV_MAX_M = 8
# GEMV split-K aims at this many programs a multiprocessor (several resident at once keep enough
# loads in flight), and leaves each program at least this many K tiles (its fixed costs: the
# partial's write and, for the last, the sum of all partials).
PROGRAMS_PER_SM = 4
MIN_K_TILES_PER_SPLIT = 2
MAX_SPLIT_K = 32
# fp32 products a thread holds per GEMV tile (BLOCK_M * BLOCK_K // 8 * BLOCK_N / threads), kept
# small so that several programs fit a multiprocessor's registers.
GEMV_ELEMENTS_PER_THREAD = 32


@dataclass(frozen=True)
class W4A16Config:
    block_m: int  # rows a program; the GEMV takes any power of two, the tl.dot kernel >= 16
    block_n: int
    block_k: int  # divides the group size
    split_k: int  # divides K // block_k
    num_warps: int = 4
    num_stages: int = 3
    gemv: bool = False  # the CUDA-core GEMV kernel instead of the tl.dot one


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def choose_gemv_config(m: int, n: int, k: int, group: int, num_sms: int) -> W4A16Config:
    block_m = _next_power_of_2(m)
    block_n = 128 if block_m <= 8 else 64
    num_warps = 4
    block_k = min(group, 128)
    max_elements = GEMV_ELEMENTS_PER_THREAD * 32 * num_warps
    while block_k > 32 and block_m * block_k // 8 * block_n > max_elements:
        block_k //= 2
    num_tiles = -(-m // block_m) * -(-n // block_n)
    num_k_tiles, split_k = k // block_k, 1
    # the smallest power of two that reaches the programs wanted, each split a few tiles long
    while num_tiles * split_k < PROGRAMS_PER_SM * num_sms and split_k < MAX_SPLIT_K:
        longer = split_k * 2
        if num_k_tiles % longer or num_k_tiles // longer < MIN_K_TILES_PER_SPLIT:
            break
        split_k = longer
    return W4A16Config(block_m, block_n, block_k, split_k, num_warps, num_stages=2, gemv=True)


def choose_config(m: int, n: int, k: int, group: int, num_sms: int) -> W4A16Config:
    """The GEMV up to GEMV_MAX_M rows; beyond, narrow tl.dot tiles and split K for small batches
    (memory-bound: fill the GPU), square tiles, no split, once the batch is large enough to be
    bound by the tensor cores."""
    if m <= GEMV_MAX_M:
        return choose_gemv_config(m, n, k, group, num_sms)
    block_k = min(group, 128)
    if m <= 64:
        block_m = max(16, _next_power_of_2(m))
        block_n = 64
    else:
        block_m, block_n = 128, 128
    tiles = -(-m // block_m) * -(-n // block_n)
    split_k, num_k_tiles = 1, k // block_k
    while tiles * split_k * 2 <= 2 * num_sms and num_k_tiles % (split_k * 2) == 0:
        if num_k_tiles // (split_k * 2) < 4:  # keep a few tiles per program to pipeline
            break
        split_k *= 2
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    return W4A16Config(block_m, block_n, block_k, split_k, num_warps)
