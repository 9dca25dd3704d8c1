"""A scheduled step as model inputs: numpy on the host, one pinned buffer per dtype, two copies.

At small batch a step's host work is what the device waits for, so the inputs are not built
from Python lists with a copy per tensor: the arrays are built with numpy, packed into one int64
and one int32 host buffer (pinned on CUDA) and sent in two non-blocking copies; the device
tensors are views of the two copies. The packing order is fixed so that a CUDA graph's
static buffers, laid out the same way, can be the copies' destination.
"""

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from llm_worker.engine.sequence import ScheduledSequence, cdiv
from llm_worker.models.attention import AttentionMetadata


@dataclass(frozen=True)
class HostInputs:
    """One step's inputs as numpy arrays; padding rows (CUDA graphs) have slot -1, seq_len 1."""

    input_ids: np.ndarray  # [num_tokens] int64
    positions: np.ndarray  # [num_tokens] int64
    slot_mapping: np.ndarray  # [num_tokens] int64
    sample_idx: np.ndarray  # [num_sampling_seqs] int64: rows of the hidden states to sample
    seq_lens: np.ndarray  # [num_seqs] int32
    cu_seqlens_q: np.ndarray  # [num_seqs + 1] int32
    block_tables: np.ndarray  # [num_seqs, max_blocks_per_seq] int32
    max_seqlen_q: int
    max_seqlen_k: int

    @property
    def int64_parts(self) -> tuple[np.ndarray, ...]:
        return (self.input_ids, self.positions, self.slot_mapping, self.sample_idx)

    @property
    def int32_parts(self) -> tuple[np.ndarray, ...]:
        return (self.seq_lens, self.cu_seqlens_q, self.block_tables)


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata
    sample_idx: torch.Tensor  # [num_sampling_seqs] rows of the hidden states to sample from


def build_host_inputs(
    scheduled: Seq[ScheduledSequence], block_size: int, table_width: int | None = None
) -> HostInputs:
    """Token ids, positions, slots, lengths and block tables of a step (no padding)."""
    num_seqs = len(scheduled)
    num_new = np.fromiter((s.num_new_tokens for s in scheduled), np.int64, num_seqs)
    starts = np.fromiter((s.start for s in scheduled), np.int64, num_seqs)
    seq_lens = starts + num_new
    cu_q = np.zeros(num_seqs + 1, np.int64)
    np.cumsum(num_new, out=cu_q[1:])
    num_tokens = int(cu_q[-1])
    if num_tokens == num_seqs and not any(s.spec_token_ids for s in scheduled):
        # decode: one token each, no slicing
        input_ids = np.fromiter((s.seq.token_ids[s.start] for s in scheduled), np.int64, num_seqs)
    else:
        pieces = (s.input_token_ids() for s in scheduled)
        input_ids = np.fromiter(chain.from_iterable(pieces), np.int64, num_tokens)
    positions = np.arange(num_tokens, dtype=np.int64) + np.repeat(starts - cu_q[:-1], num_new)
    max_seqlen_k = int(seq_lens.max())
    width = table_width or cdiv(max_seqlen_k, block_size)
    tables = np.zeros((num_seqs, width), np.int32)
    for row, item in zip(tables, scheduled, strict=True):
        table = item.seq.block_table[:width]
        row[: len(table)] = table
    seq_idx = np.repeat(np.arange(num_seqs), num_new)
    slots = tables[seq_idx, positions // block_size].astype(np.int64) * block_size
    slots += positions % block_size
    rows = np.fromiter((s.num_logits_rows for s in scheduled), np.int64, num_seqs)
    if rows.max(initial=0) <= 1:
        sample_idx = cu_q[1:][rows == 1] - 1
    else:  # the trailing `rows[i]` positions of each sequence, in order
        row_starts = np.repeat(cu_q[1:] - rows, rows)
        offsets = np.arange(int(rows.sum())) - np.repeat(np.cumsum(rows) - rows, rows)
        sample_idx = row_starts + offsets
    return HostInputs(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slots,
        sample_idx=sample_idx,
        seq_lens=seq_lens.astype(np.int32),
        cu_seqlens_q=cu_q.astype(np.int32),
        block_tables=tables,
        max_seqlen_q=int(num_new.max()),
        max_seqlen_k=max_seqlen_k,
    )


def pad_inputs(
    host: HostInputs,
    batch_size: int,
    num_tokens: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    pad_seq_tokens: int = 1,
) -> HostInputs:
    """Pad a step to `batch_size` sequences and `num_tokens` tokens for a CUDA graph.

    Each padding sequence gets `pad_seq_tokens` tokens (1 or 0); tokens past the last sequence
    belong to none, so attention never reads them. Padding tokens write nowhere (slot -1) and
    attend to one key of block 0, which is harmless whatever it holds; their outputs are never
    read.
    """
    num_seqs, width = host.block_tables.shape
    real_tokens = host.input_ids.shape[0]
    extra_seqs, extra_tokens = batch_size - num_seqs, num_tokens - real_tokens
    assert extra_seqs >= 0 and extra_tokens >= extra_seqs * pad_seq_tokens

    def pad(values: np.ndarray, fill: int, extra: int) -> np.ndarray:
        return np.concatenate([values, np.full(extra, fill, values.dtype)])

    pad_starts = real_tokens + pad_seq_tokens * np.arange(1, extra_seqs + 1, dtype=np.int32)
    return HostInputs(
        input_ids=pad(host.input_ids, 0, extra_tokens),
        positions=pad(host.positions, 0, extra_tokens),
        slot_mapping=pad(host.slot_mapping, -1, extra_tokens),
        sample_idx=host.sample_idx,
        seq_lens=pad(host.seq_lens, 1, extra_seqs),
        cu_seqlens_q=np.concatenate([host.cu_seqlens_q, pad_starts]),
        block_tables=np.concatenate([host.block_tables, np.zeros((extra_seqs, width), np.int32)]),
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
    )


def device_views(flat64: torch.Tensor, flat32: torch.Tensor, host: HostInputs) -> StepInputs:
    """Tensors of `host`'s shapes over packed int64 and int32 buffers (the packing order)."""
    parts64 = torch.split(flat64[: sum(p.size for p in host.int64_parts)],
                          [p.size for p in host.int64_parts])  # fmt: skip
    parts32 = torch.split(flat32[: sum(p.size for p in host.int32_parts)],
                          [p.size for p in host.int32_parts])  # fmt: skip
    input_ids, positions, slots, sample_idx = parts64
    seq_lens, cu_q, tables = parts32
    meta = AttentionMetadata(
        slot_mapping=slots,
        block_tables=tables.view(host.block_tables.shape),
        seq_lens=seq_lens,
        cu_seqlens_q=cu_q,
        max_seqlen_q=host.max_seqlen_q,
        max_seqlen_k=host.max_seqlen_k,
    )
    return StepInputs(input_ids=input_ids, positions=positions, meta=meta, sample_idx=sample_idx)


class _Staging:
    """A growable host buffer of one dtype; on CUDA pinned, with an event guarding its reuse."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.pinned = device.type == "cuda"
        self.buffer = torch.empty(0, dtype=dtype)
        self.copied: torch.cuda.Event | None = None

    def upload(self, parts: tuple[np.ndarray, ...], out: torch.Tensor | None) -> torch.Tensor:
        """Pack `parts` and copy them to the device (into `out` when given); returns the copy."""
        total = sum(p.size for p in parts)
        if not self.pinned:
            packed = np.concatenate([p.ravel() for p in parts]) if total else np.zeros(0)
            flat = torch.from_numpy(packed.astype(self.buffer.numpy().dtype, copy=False))
            return flat if out is None else out[:total].copy_(flat)
        if self.copied is not None:
            self.copied.synchronize()  # the last copy out of the buffer must be done
        if self.buffer.numel() < total:
            self.buffer = torch.empty(max(total, 2 * self.buffer.numel()), dtype=self.dtype,
                                      pin_memory=True)  # fmt: skip
        host, offset = self.buffer.numpy(), 0
        for part in parts:
            host[offset : offset + part.size] = part.ravel()
            offset += part.size
        if out is None:
            flat = self.buffer[:total].to(self.device, non_blocking=True)
        else:
            flat = out[:total].copy_(self.buffer[:total], non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()
        return flat


class InputUploader:
    """Sends HostInputs to the device: two copies, into fresh tensors or into static buffers."""

    def __init__(self, device: torch.device) -> None:
        self.staging64 = _Staging(torch.int64, device)
        self.staging32 = _Staging(torch.int32, device)

    def upload(
        self,
        host: HostInputs,
        out64: torch.Tensor | None = None,
        out32: torch.Tensor | None = None,
    ) -> StepInputs:
        flat64 = self.staging64.upload(host.int64_parts, out64)
        flat32 = self.staging32.upload(host.int32_parts, out32)
        return device_views(flat64, flat32, host)
