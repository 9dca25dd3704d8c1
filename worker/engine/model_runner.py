"""Turns a scheduled step into tensors, runs the model over the paged KV cache, samples."""

import logging
from dataclasses import dataclass

import torch

from worker.engine.block_manager import cdiv
from worker.engine.sampler import SampledToken, SamplingRow, sample
from worker.engine.scheduler import ScheduledSequence
from worker.models.attention import AttentionMetadata
from worker.models.llama import CausalLM, KVCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata
    sample_idx: torch.Tensor  # [num_sampling_seqs] rows of the hidden states to sample from


def kv_block_bytes(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
    cfg = model.config
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    return per_token * block_size * torch.tensor([], dtype=dtype).element_size()


class ModelRunner:
    def __init__(self, model: CausalLM, block_size: int, seed: int) -> None:
        self.model = model
        self.block_size = block_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.kv_caches: list[KVCache] = []
        self.num_blocks = 0
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.allocate_kv_cache(1)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """One K and one V tensor per layer: [num_blocks, block_size, num_kv_heads, head_dim]."""
        cfg = self.model.config
        self.kv_caches = []  # drop the old cache before the new one is allocated
        shape = (num_blocks, self.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(cfg.num_layers)
        ]
        self.num_blocks = num_blocks

    def prepare(self, scheduled: list[ScheduledSequence]) -> StepInputs:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        seq_lens: list[int] = []
        cu_q = [0]
        sample_idx: list[int] = []
        for item in scheduled:
            seq, start, end = item.seq, item.start, item.start + item.num_new_tokens
            table = seq.block_table
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            seq_lens.append(end)
            cu_q.append(cu_q[-1] + item.num_new_tokens)
            if item.samples:
                sample_idx.append(cu_q[-1] - 1)
        max_blocks = max(cdiv(n, bs) for n in seq_lens)
        tables = [
            s.seq.block_table[:max_blocks]
            + [0] * (max_blocks - min(max_blocks, len(s.seq.block_table)))
            for s in scheduled
        ]
        dev = self.device

        def t(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(dev, non_blocking=True)

        meta = AttentionMetadata(
            slot_mapping=t(slots, torch.int64),
            block_tables=t(tables, torch.int32),
            seq_lens=t(seq_lens, torch.int32),
            cu_seqlens_q=t(cu_q, torch.int32),
            max_seqlen_q=max(s.num_new_tokens for s in scheduled),
            max_seqlen_k=max(seq_lens),
        )
        return StepInputs(
            input_ids=t(input_ids, torch.int64),
            positions=t(positions, torch.int64),
            meta=meta,
            sample_idx=t(sample_idx, torch.int64),
        )

    @torch.inference_mode()
    def execute(
        self, scheduled: list[ScheduledSequence], rows: list[SamplingRow]
    ) -> list[SampledToken]:
        """Run one step; `rows` are the sampling rows of the items whose `samples` is True."""
        inputs = self.prepare(scheduled)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
        if not rows:
            return []
        logits = self.model.compute_logits(hidden[inputs.sample_idx])
        return sample(logits, rows, self.generator)

    @torch.inference_mode()
    def profile_peak_bytes(self, num_tokens: int) -> int:
        """Peak CUDA memory of a prefill of `num_tokens`; the KV cache gets what is left."""
        assert self.device.type == "cuda"
        torch.cuda.reset_peak_memory_stats(self.device)
        ids = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        meta = AttentionMetadata(
            slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=self.device),
            block_tables=torch.zeros(
                (1, cdiv(num_tokens, self.block_size)), dtype=torch.int32, device=self.device
            ),
            seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=self.device),
            cu_seqlens_q=torch.tensor([0, num_tokens], dtype=torch.int32, device=self.device),
            max_seqlen_q=num_tokens,
            max_seqlen_k=num_tokens,
        )
        hidden = self.model(ids, torch.arange(num_tokens, device=self.device), self.kv_caches, meta)
        self.model.compute_logits(hidden[-1:])
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)
