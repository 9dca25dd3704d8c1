"""CUDA graphs for decode steps: one per batch-size bucket, captured once at start-up.

A decode step of a small batch launches hundreds of small kernels; replaying a graph turns that
into one launch, so the GPU no longer waits for Python. Every graph reads its inputs from the same
static buffers, laid out as `step_inputs` packs them, so a step costs two host-to-device copies
and one replay. Batches are padded up to the next bucket; padding rows write to slot -1.
Attention gets max_seqlen_k = max_model_len as its hint, a true upper bound, so the launch
configuration captured in the graph is valid for every context length it will see.
"""

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from worker.engine.block_manager import cdiv
from worker.engine.step_inputs import (
    HostInputs,
    InputUploader,
    pad_decode_inputs,
)
from worker.models.llama import CausalLM, KVCache

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


class DecodeGraphs:
    """Captured decode graphs over shared static inputs; `run` replays the smallest that fits."""

    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[KVCache],
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
    ) -> None:
        device = next(model.parameters()).device
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.table_width = cdiv(max_model_len, block_size)
        self.batch_sizes = graph_batch_sizes(max_num_seqs)
        # int64: ids, positions, slots (+ sample_idx, unused); int32: lens, cu_q, tables
        self.static64 = torch.zeros(4 * max_num_seqs, dtype=torch.int64, device=device)
        self.static32 = torch.zeros(
            (2 + self.table_width) * max_num_seqs + 1, dtype=torch.int32, device=device
        )
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = None
        for batch_size in reversed(self.batch_sizes):  # the largest first: the rest reuse its pool
            graph, hidden = self._capture(model, kv_caches, batch_size, pool)
            pool = graph.pool()
            self.graphs[batch_size] = (graph, hidden)
        log.info("captured %d decode CUDA graphs, batch sizes %s", len(self.graphs),
                 self.batch_sizes)  # fmt: skip

    def padded_inputs(self, host: HostInputs, batch_size: int) -> HostInputs:
        return pad_decode_inputs(host, batch_size, self.max_model_len)

    def _capture(
        self,
        model: CausalLM,
        kv_caches: list[KVCache],
        batch_size: int,
        pool: Any,
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        host = self.padded_inputs(_template(self.table_width), batch_size)
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

    def bucket(self, num_seqs: int) -> int | None:
        return next((b for b in self.batch_sizes if b >= num_seqs), None)

    def run(
        self,
        host: HostInputs,
        uploader: InputUploader,
        fill: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Hidden states [num_seqs, hidden_size] of a decode step `host` (one token a sequence);
        `fill` may then overwrite input ids on the device before the replay."""
        num_seqs = host.seq_lens.shape[0]
        batch_size = self.bucket(num_seqs)
        assert batch_size is not None and host.block_tables.shape[1] == self.table_width
        inputs = uploader.upload(self.padded_inputs(host, batch_size), self.static64, self.static32)
        if fill is not None:
            fill(inputs.input_ids)
        graph, hidden = self.graphs[batch_size]
        graph.replay()
        return hidden[:num_seqs]
