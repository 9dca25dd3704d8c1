"""Structured outputs' mask on the device: logits of tokens the grammar forbids become -inf.

The bitmask is xgrammar's layout: int32 words, bit `t % 32` of word `t // 32` set where token
`t` is allowed. Its rows are compact, one per constrained position, each naming the logits row
it masks, so unconstrained rows are neither copied to the device nor touched. A token at or past
`vocab_size` (the vocabulary the bitmask was made for) is always masked: a logits row wider than
that (an embedding padded past the tokenizer) never samples a padding id.
"""

import torch
import triton
import triton.language as tl

LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_WORDS = 64  # 2,048 tokens a program


@triton.jit
def _apply_token_bitmask_kernel(
    logits_ptr,  # [num_logits_rows, logits_row_stride], masked in place
    bitmask_ptr,  # [num_mask_rows, num_words] int32, contiguous
    row_idx_ptr,  # [num_mask_rows] int32: the logits row each bitmask row masks
    logits_row_stride,
    num_words,
    vocab_size,  # tokens the bitmask covers; columns at or past it are always masked
    num_cols,  # logits columns
    BLOCK_WORDS: tl.constexpr,
):
    mask_row = tl.program_id(0).to(tl.int64)
    logits_row = tl.load(row_idx_ptr + mask_row).to(tl.int64)
    word_idx = tl.program_id(1) * BLOCK_WORDS + tl.arange(0, BLOCK_WORDS)  # [BLOCK_WORDS]
    words = tl.load(bitmask_ptr + mask_row * num_words + word_idx, mask=word_idx < num_words,
                    other=0)  # fmt: skip
    bit_idx = tl.arange(0, 32)
    allowed = ((words[:, None] >> bit_idx[None, :]) & 1) != 0  # [BLOCK_WORDS, 32]
    token_idx = word_idx[:, None] * 32 + bit_idx[None, :]  # [BLOCK_WORDS, 32]
    forbidden = (~allowed | (token_idx >= vocab_size)) & (token_idx < num_cols)
    tl.store(logits_ptr + logits_row * logits_row_stride + token_idx, float("-inf"),
             mask=forbidden)  # fmt: skip


def apply_token_bitmask_(
    logits: torch.Tensor,  # [num_rows, num_cols] float32/float16/bfloat16, last dim contiguous
    bitmask: torch.Tensor,  # [num_mask_rows, num_words] int32, contiguous, on logits' device
    row_idx: torch.Tensor,  # [num_mask_rows] int32 on logits' device: the row each one masks
    vocab_size: int,  # the vocabulary the bitmask was filled for (<= num_words * 32)
) -> None:
    """Set logits[row_idx[i], t] = -inf where bit t of bitmask[i] is 0 or t >= vocab_size; the
    same as `apply_token_bitmask_reference`. Rows not named in row_idx are left alone."""
    _check(logits, bitmask, row_idx, vocab_size)
    num_mask_rows, num_words = bitmask.shape
    num_cols = logits.shape[1]
    if num_mask_rows == 0 or num_cols == 0:
        return
    grid = (num_mask_rows, triton.cdiv(triton.cdiv(num_cols, 32), BLOCK_WORDS))
    _apply_token_bitmask_kernel[grid](
        logits_ptr=logits,
        bitmask_ptr=bitmask,
        row_idx_ptr=row_idx,
        logits_row_stride=logits.stride(0),
        num_words=num_words,
        vocab_size=vocab_size,
        num_cols=num_cols,
        BLOCK_WORDS=BLOCK_WORDS,
        num_warps=4,
    )


def apply_token_bitmask_reference(
    logits: torch.Tensor,  # [num_rows, num_cols]
    bitmask: torch.Tensor,  # [num_mask_rows, num_words] int32
    row_idx: torch.Tensor,  # [num_mask_rows] integer
    vocab_size: int,
) -> None:
    """The oracle (and the CPU path): same contract as `apply_token_bitmask_`."""
    _check(logits, bitmask, row_idx, vocab_size)
    num_cols = logits.shape[1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask[:, :, None] >> shifts) & 1  # [num_mask_rows, num_words, 32]
    allowed = bits.flatten(1).bool()  # [num_mask_rows, num_words * 32]
    token_idx = torch.arange(allowed.shape[1], device=bitmask.device)
    allowed &= token_idx < vocab_size
    if allowed.shape[1] < num_cols:
        allowed = torch.nn.functional.pad(allowed, (0, num_cols - allowed.shape[1]))
    rows = row_idx.long()
    logits[rows] = logits[rows].masked_fill(~allowed[:, :num_cols], float("-inf"))


def _check(
    logits: torch.Tensor, bitmask: torch.Tensor, row_idx: torch.Tensor, vocab_size: int
) -> None:
    if logits.dim() != 2 or logits.dtype not in LOGITS_DTYPES or logits.stride(1) != 1:
        raise ValueError(
            "logits must be a float32/float16/bfloat16 [rows, vocab] tensor contiguous in its "
            f"last dim, got {logits.dtype} {list(logits.shape)} strides {logits.stride()}"
        )
    if bitmask.dim() != 2 or bitmask.dtype != torch.int32 or not bitmask.is_contiguous():
        raise ValueError(
            f"bitmask must be a contiguous int32 [rows, words] tensor, got {bitmask.dtype} "
            f"{list(bitmask.shape)}"
        )
    if row_idx.shape != (bitmask.shape[0],) or row_idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"row_idx must be int32/int64 [{bitmask.shape[0]}], got {row_idx.dtype} "
            f"{list(row_idx.shape)}"
        )
    if not logits.device == bitmask.device == row_idx.device:
        raise ValueError(
            f"logits, bitmask and row_idx must share a device, got {logits.device}, "
            f"{bitmask.device}, {row_idx.device}"
        )
    if not 0 < vocab_size <= bitmask.shape[1] * 32:
        raise ValueError(
            f"vocab_size {vocab_size} must be in 1..{bitmask.shape[1] * 32} (the bitmask's bits)"
        )
