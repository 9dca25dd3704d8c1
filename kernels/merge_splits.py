"""Merge the split-K partial softmax states of `paged_attention` into the output (Triton)."""

import torch
import triton
import triton.language as tl

from llm_worker.kernels.pdl import launch_options, pdl_device

MERGE_MIN_PROGRAMS = 128


@triton.jit(do_not_specialize=["num_rows", "num_splits"])
def _merge_splits_kernel(
    out_ptr,  # [num_tokens, num_heads, head_dim], contiguous
    part_acc_ptr,  # [num_splits, num_tokens, num_heads, head_dim] fp32
    part_max_ptr,  # [num_splits, num_tokens, num_heads] fp32
    part_sum_ptr,  # [num_splits, num_tokens, num_heads] fp32
    num_real_tokens_ptr,  # [1] int32: tokens past it are padding (cu_seqlens_q[num_seqs])
    num_rows,  # num_tokens * num_heads
    num_splits,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr,
    DIM_BLOCK: tl.constexpr,  # head_dim columns a program merges
    PDL: tl.constexpr,  # launched as a programmatic dependent of the attention launch
):
    """out[row] = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s, with m = max_s m_s.
    Padding rows, which no split wrote, come out as zeros whatever their partials hold."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.program_id(1) * DIM_BLOCK + tl.arange(0, DIM_BLOCK)
    # The partials are read at once with the token count, not after it, which saves a
    # dependent round trip: a padding row's (never written) are discarded by select.
    is_real = row // NUM_HEADS < tl.load(num_real_tokens_ptr)
    if PDL:
        tl.extra.cuda.gdc_wait()  # the partials are the attention launch's output
    split_valid = offs_s < num_splits
    part_rows = offs_s.to(tl.int64) * num_rows + row
    m_s = tl.load(part_max_ptr + part_rows, mask=split_valid, other=float("-inf"))
    l_s = tl.load(part_sum_ptr + part_rows, mask=split_valid, other=0.0)
    acc_s = tl.load(
        part_acc_ptr + part_rows[:, None] * HEAD_DIM + offs_d[None, :],
        mask=split_valid[:, None],
        other=0.0,
    )
    m_s = tl.where(is_real, m_s, float("-inf"))  # splits past num_splits loaded as -inf
    l_s = tl.where(is_real, l_s, 0.0)
    acc_s = tl.where(is_real, acc_s, 0.0)
    m_max = tl.max(m_s, 0)
    weight = tl.exp2(m_s - tl.where(m_max == float("-inf"), 0.0, m_max))
    denom = tl.sum(weight * l_s, 0)
    out = tl.sum(acc_s * weight[:, None], 0) / tl.where(denom == 0.0, 1.0, denom)
    tl.store(out_ptr + row * HEAD_DIM + offs_d, out.to(out_ptr.dtype.element_ty))


def merge_splits(
    out: torch.Tensor,  # [num_tokens, num_heads, head_dim], contiguous
    part_acc: torch.Tensor,  # [num_splits, num_tokens, num_heads, head_dim] fp32
    part_max: torch.Tensor,  # [num_splits, num_tokens, num_heads] fp32, log2 domain
    part_sum: torch.Tensor,  # [num_splits, num_tokens, num_heads] fp32
    num_real_tokens: torch.Tensor,  # [1] int32 on the device, e.g. cu_seqlens_q[-1:]
    pdl: bool = False,  # a programmatic dependent of the launch that wrote the partials
) -> None:
    """Writes every row of `out`: the real tokens' from their splits, the padding's as zeros."""
    num_splits, num_tokens, num_heads, head_dim = part_acc.shape
    assert out.is_contiguous() and out.shape == (num_tokens, num_heads, head_dim)
    assert part_max.shape == part_sum.shape == (num_splits, num_tokens, num_heads)
    num_rows = num_tokens * num_heads
    if num_rows == 0:
        return
    pdl = pdl and pdl_device(out.device)
    # Few rows (batch 1: 32 heads) leave each program a long [splits, head_dim] read: the head
    # dimension is split (down to 32 columns) until the launch has MERGE_MIN_PROGRAMS programs.
    # Past that, more programs reading less each cost more than they save (batch 4: 128 rows).
    dim_block = head_dim
    while num_rows * (head_dim // dim_block) < MERGE_MIN_PROGRAMS and dim_block >= 64:
        dim_block //= 2
    _merge_splits_kernel[(num_rows, head_dim // dim_block)](
        out_ptr=out,
        part_acc_ptr=part_acc,
        part_max_ptr=part_max,
        part_sum_ptr=part_sum,
        num_real_tokens_ptr=num_real_tokens,
        num_rows=num_rows,
        num_splits=num_splits,
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        BLOCK_SPLITS=triton.next_power_of_2(num_splits),
        DIM_BLOCK=dim_block,
        PDL=pdl,
        **launch_options(pdl),
    )
