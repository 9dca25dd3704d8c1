"""CUDA graphs for decode, verification and prefill steps, captured at start-up.

A decode step of a small batch launches hundreds of small kernels; replaying a graph turns that
into one launch, so the GPU no longer waits for Python. Every graph of a family reads its inputs
from the same static buffers, laid out as `step_inputs` packs them, so a step costs two
host-to-device copies and one replay. Batches are padded up to the next bucket; padding rows write
to slot -1.

A family serves steps of up to `tokens_per_seq` query tokens per sequence: 1 for decode, k + 1
for verifying k speculative tokens (a sequence with fewer drafts, or none, fits too: the
attention kernel finds each sequence's tokens from cu_seqlens_q, and tokens past the last
sequence belong to none). Attention gets max_seqlen_q = tokens_per_seq and max_seqlen_k =
max_model_len as hints, true upper bounds, so the launch configuration captured in the graph is
valid for every step it will see.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm_worker.engine.sequence import ScheduledSequence, cdiv
from llm_worker.engine.step_inputs import HostInputs, InputUploader, build_host_inputs, pad_inputs
from llm_worker.models.llama import CausalLM, KVCache

log = logging.getLogger(__name__)


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8, up to and including max_num_seqs."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs]
    sizes += list(range(8, max_num_seqs, 8))
    return [*sizes, max_num_seqs]


def _template(table_width: int) -> HostInputs:
    """Inputs of the right shapes for capture: every row a padding row."""
    empty = np.zeros(0, np.int64)
    return HostInputs(
        input_ids=empty,
        positions=empty,
        slot_mapping=empty,
        sample_idx=empty,
        seq_lens=np.zeros(0, np.int32),
        cu_seqlens_q=np.zeros(1, np.int32),
        block_tables=np.zeros((0, table_width), np.int32),
        max_seqlen_q=1,
        max_seqlen_k=1,
    )


def prefill_token_buckets(max_num_batched_tokens: int) -> list[int]:
    """128, then every multiple of 256, up to and including the token budget: a step computes
    at most 255 padding tokens (a 600-token prefill runs as 768, not 1024)."""
    sizes = (128, *range(256, max_num_batched_tokens, 256))
    return [t for t in sizes if t < max_num_batched_tokens] + [max_num_batched_tokens]


class StepGraphs:
    """One family of captured graphs over shared static inputs; `run` replays the smallest
    that fits. Each graph has a fixed number of sequences and of tokens:

    - decode / verification (`tokens_per_seq` 1 or k + 1): for each batch bucket b, b sequences
      and b * tokens_per_seq tokens; a padding sequence holds one token;
    - prefill (`token_buckets` given; tokens_per_seq = the token budget): steps that prefill,
      mixed with decodes or not. Every graph has max_num_seqs sequences (padding sequences
      hold no token) and one of the token buckets (128, then multiples of 256), so a step
      pays for its own token count rounded up, not for a batch shape.
    """

    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[KVCache],
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        tokens_per_seq: int = 1,
        pool: Any = None,
        token_buckets: list[int] | None = None,
    ) -> None:
        device = next(model.parameters()).device
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.tokens_per_seq = tokens_per_seq
        self.table_width = cdiv(max_model_len, block_size)
        if token_buckets is None:
            self.pad_seq_tokens = 1
            self.shapes = [(b, b * tokens_per_seq) for b in graph_batch_sizes(max_num_seqs)]
        else:
            self.pad_seq_tokens = 0
            self.shapes = [(max_num_seqs, t) for t in token_buckets]
        max_tokens = max(t for _, t in self.shapes)
        # int64: ids, positions, slots, sample_idx; int32: lens, cu_q, tables
        self.static64 = torch.zeros(4 * max_tokens, dtype=torch.int64, device=device)
        self.static32 = torch.zeros(
            (2 + self.table_width) * max_num_seqs + 1, dtype=torch.int32, device=device
        )
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        for shape in reversed(self.shapes):  # the largest first: the rest reuse its pool
            graph, hidden = self._capture(model, kv_caches, shape, pool)
            pool = graph.pool()
            self.graphs[shape] = (graph, hidden)
        self.pool = pool
        log.info("captured %d CUDA graphs of up to %d tokens a sequence, (sequences, tokens) "
                 "%s", len(self.graphs), tokens_per_seq, self.shapes)  # fmt: skip

    def padded_inputs(self, host: HostInputs, shape: tuple[int, int]) -> HostInputs:
        num_seqs, num_tokens = shape
        return pad_inputs(host, num_seqs, num_tokens, self.tokens_per_seq, self.max_model_len,
                          self.pad_seq_tokens)  # fmt: skip

    def _capture(
        self,
        model: CausalLM,
        kv_caches: list[KVCache],
        shape: tuple[int, int],
        pool: Any,
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        host = self.padded_inputs(_template(self.table_width), shape)
        uploader = InputUploader(self.static64.device)
        inputs = uploader.upload(host, self.static64, self.static32)
        torch.cuda.synchronize()

        def forward() -> torch.Tensor:
            return model(inputs.input_ids, inputs.positions, kv_caches, inputs.meta)

        forward()  # compiles the Triton kernels and settles cuBLAS outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            hidden = forward()
        return graph, hidden

    def bucket(self, scheduled: list[ScheduledSequence]) -> tuple[int, int] | None:
        """The graph for a step of at most tokens_per_seq tokens per sequence (a decode, a
        verification, a prefill chunk); None when the step must run eagerly."""
        if any(s.num_new_tokens > self.tokens_per_seq for s in scheduled):
            return None
        num_seqs = len(scheduled)
        num_tokens = sum(s.num_new_tokens for s in scheduled)
        for shape in self.shapes:
            padding = (shape[0] - num_seqs) * self.pad_seq_tokens
            if shape[0] >= num_seqs and shape[1] >= num_tokens + padding:
                return shape
        return None

    def run(
        self,
        scheduled: list[ScheduledSequence],
        shape: tuple[int, int],
        uploader: InputUploader,
        fill: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Hidden states of the step's sampled positions on the graph `shape` (what `bucket`
        chose for it); `fill` may overwrite input ids on the device before the replay."""
        host = build_host_inputs(scheduled, self.block_size, self.table_width)
        padded = self.padded_inputs(host, shape)
        inputs = uploader.upload(padded, self.static64, self.static32)
        if fill is not None:
            fill(inputs.input_ids)
        graph, hidden = self.graphs[shape]
        graph.replay()
        num_rows = host.sample_idx.shape[0]
        if num_rows == len(scheduled) == host.input_ids.shape[0]:
            return hidden[:num_rows]  # decode: the sampled rows are the first ones, in order
        return hidden[inputs.sample_idx]


@dataclass(frozen=True)
class GraphSet:
    """The families a runner replays, tried in this order for each step: decode; verification
    of k drafts (when speculating); steps that prefill (--prefill-graphs)."""

    decode: StepGraphs
    verify: StepGraphs | None = None
    prefill: StepGraphs | None = None

    @property
    def pool(self) -> Any:
        """The memory pool the families share, which other captures may share too."""
        return (self.prefill or self.verify or self.decode).pool

    def find(self, scheduled: list[ScheduledSequence]) -> tuple[StepGraphs, tuple[int, int]] | None:
        """The first family with a graph for this step, and that graph's shape."""
        for graphs in (self.decode, self.verify, self.prefill):
            if graphs is None:
                continue
            shape = graphs.bucket(scheduled)
            if shape is not None:
                return graphs, shape
        return None
