"""Turns a scheduled step into tensors, runs the model over the paged KV cache, samples."""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm_worker.engine.block_manager import cdiv
from llm_worker.engine.cuda_graphs import StepGraphs, prefill_token_buckets
from llm_worker.engine.sampler import SampledToken, SamplingRow, device_tensor, sample, sample_ids
from llm_worker.engine.scheduler import ScheduledSequence
from llm_worker.engine.step_inputs import InputUploader, StepInputs, build_host_inputs
from llm_worker.models.attention import AttentionMetadata
from llm_worker.models.llama import CausalLM, KVCache

log = logging.getLogger(__name__)


def kv_block_bytes(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
    cfg = model.config
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    return per_token * block_size * torch.tensor([], dtype=dtype).element_size()


def make_kv_caches(
    model: CausalLM, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[KVCache]:
    """One K and one V tensor per layer: [num_blocks, block_size, num_kv_heads, head_dim]."""
    cfg = model.config
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    return [
        (
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )
        for _ in range(cfg.num_layers)
    ]


class AsyncTokens:
    """A step's sampled token ids: on the device at once, on the host once the copy lands."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.device_ids = ids  # [n] int64; the next step reads its input tokens from here
        self.event: torch.cuda.Event | None = None
        if ids.device.type == "cuda":
            self.host_ids = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self.host_ids.copy_(ids, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host_ids = ids

    def tolist(self) -> list[int]:
        """Waits for the step to finish on the device."""
        if self.event is not None:
            self.event.synchronize()
        return self.host_ids.tolist()


@dataclass(frozen=True)
class PendingTokens:
    """Input tokens of a step that the step before it sampled and the host has not seen:
    input row rows[i] takes source.device_ids[source_idx[i]]."""

    rows: np.ndarray  # [n] int64: positions in the step's flat input_ids
    source: AsyncTokens
    source_idx: np.ndarray  # [n] int64

    def fill(self, input_ids: torch.Tensor) -> None:
        device = input_ids.device
        tokens = self.source.device_ids.index_select(0, device_tensor(self.source_idx, device))
        input_ids.index_copy_(0, device_tensor(self.rows, device), tokens)


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        block_size: int,
        seed: int,
        kv_cache_dtype: torch.dtype | None = None,  # default: the model's dtype
    ) -> None:
        self.model = model
        self.block_size = block_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.kv_cache_dtype = kv_cache_dtype or self.dtype
        self.kv_caches: list[KVCache] = []
        self.num_blocks = 0
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.uploader = InputUploader(self.device)
        # Decode steps replay `graphs`; with speculation, verification steps `verify_graphs`;
        # steps that prefill `prefill_graphs` (--prefill-graphs).
        self.graphs: StepGraphs | None = None
        self.verify_graphs: StepGraphs | None = None
        self.prefill_graphs: StepGraphs | None = None  # steps that prefill (chunks, mixed)
        self.allocate_kv_cache(1)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        # graphs hold the old cache's addresses
        self.graphs = self.verify_graphs = self.prefill_graphs = None
        self.kv_caches = []  # drop the old cache before the new one is allocated
        self.kv_caches = make_kv_caches(
            self.model, num_blocks, self.block_size, self.kv_cache_dtype, self.device
        )
        self.num_blocks = num_blocks

    def capture_graphs(
        self,
        max_num_seqs: int,
        max_model_len: int,
        verify_tokens: int = 0,
        prefill_tokens: int = 0,
    ) -> Any:
        """Capture graphs over the current KV cache (call after its last allocation): decode
        steps; verification steps of `verify_tokens` tokens a sequence if that is over 1; steps
        that prefill, up to `prefill_tokens` tokens, if that is over 0. Returns the graphs'
        memory pool, which other captures may share."""
        assert self.device.type == "cuda"
        torch.cuda.empty_cache()  # the profiling run's activations: the pool takes their place
        with torch.inference_mode():
            args = (self.model, self.kv_caches, max_num_seqs, max_model_len, self.block_size)
            self.graphs = StepGraphs(*args)
            pool = self.graphs.pool
            if verify_tokens > 1:
                self.verify_graphs = StepGraphs(*args, verify_tokens, pool)
                pool = self.verify_graphs.pool
            if prefill_tokens > 0:
                buckets = prefill_token_buckets(prefill_tokens)
                self.prefill_graphs = StepGraphs(*args, prefill_tokens, pool, buckets)
                pool = self.prefill_graphs.pool
        return pool

    def graphs_for(
        self, scheduled: list[ScheduledSequence]
    ) -> tuple[StepGraphs, tuple[int, int]] | None:
        """The first family with a graph for this step, and that graph's shape."""
        for graphs in (self.graphs, self.verify_graphs, self.prefill_graphs):
            if graphs is None:
                continue
            shape = graphs.bucket(scheduled)
            if shape is not None:
                return graphs, shape
        return None

    def prepare(self, scheduled: list[ScheduledSequence]) -> StepInputs:
        """Eager-step inputs on the device (the CPU test compares them with list-built ones)."""
        return self.uploader.upload(build_host_inputs(scheduled, self.block_size))

    def _forward(
        self, scheduled: list[ScheduledSequence], pending: PendingTokens | None
    ) -> torch.Tensor:
        """Hidden states of the sampled positions: replayed from a CUDA graph where a family
        has one for the step, else run eagerly. `pending` fills in input tokens that the
        previous step sampled and that have not reached the host yet."""
        fill = pending.fill if pending is not None else None
        found = self.graphs_for(scheduled)
        if found is not None:
            graphs, shape = found
            return graphs.run(scheduled, shape, self.uploader, fill)
        inputs = self.prepare(scheduled)
        if fill is not None:
            fill(inputs.input_ids)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
        return hidden[inputs.sample_idx]

    @torch.inference_mode()
    def execute(
        self,
        scheduled: list[ScheduledSequence],
        rows: list[SamplingRow],
        pending: PendingTokens | None = None,
    ) -> list[SampledToken]:
        """Run one step and read its tokens back; `rows` are the sampling rows of the items
        whose `samples` is True."""
        hidden = self._forward(scheduled, pending)
        if not rows:
            return []
        return sample(self.model.compute_logits(hidden), rows, self.generator)

    @torch.inference_mode()
    def launch(
        self,
        scheduled: list[ScheduledSequence],
        rows: list[SamplingRow],
        pending: PendingTokens | None = None,
    ) -> AsyncTokens:
        """Queue one step and its sampling on the device and return at once: the tokens come
        back through a non-blocking copy (async scheduling). Rows must not need the host's
        token history (sampler.needs_host_history)."""
        hidden = self._forward(scheduled, pending)
        return AsyncTokens(sample_ids(self.model.compute_logits(hidden), rows, self.generator))

    @torch.inference_mode()
    def logits(self, scheduled: list[ScheduledSequence]) -> torch.Tensor:
        """A step returning the logits of every item's trailing `num_logits_rows` positions
        (all k + 1 of a sequence verifying k drafts), in item order."""
        return self.model.compute_logits(self._forward(scheduled, None))

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
