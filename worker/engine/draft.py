"""The draft-model proposer: a small model with the target's tokenizer, on its own paged KV cache.

The draft's cache has the target's block count and is indexed by the target's block tables, so a
position's draft KV sits in the same slot as its target KV and needs no bookkeeping of its own
beyond `Sequence.num_draft_computed` (which update sets from the step's result). The draft
catches up lazily: when a sequence speculates, the draft first runs every position it has not
seen (a whole prompt the first time, one or two tokens after that) together with the pending
token, then k - 1 single-token steps.
"""

import dataclasses
from typing import Any

import torch
from torch import nn

from llm_worker.engine.cuda_graphs import StepGraphs
from llm_worker.engine.kv_cache import kv_block_bytes, make_kv_caches
from llm_worker.engine.sampler import SamplingRow, draw, filtered_probs
from llm_worker.engine.sequence import ScheduledSequence
from llm_worker.engine.step_inputs import InputUploader, build_host_inputs
from llm_worker.models.llama import CausalLM, KVCache


def truncated_copy(target: CausalLM, num_layers: int) -> CausalLM:
    """The target's first `num_layers` layers with its embeddings, final norm and head; no
    weight is copied, so the draft costs only its KV cache."""
    total = target.config.num_layers
    if not 1 <= num_layers < total:
        raise ValueError(f"a truncated draft needs 1..{total - 1} layers, not {num_layers}")
    cfg = dataclasses.replace(target.config, num_layers=num_layers)
    with torch.device("meta"):
        draft = CausalLM(cfg, target.backend)
    draft.model.embed_tokens = target.model.embed_tokens
    draft.model.layers = nn.ModuleList(list(target.model.layers)[:num_layers])
    draft.model.norm = target.model.norm
    draft.lm_head = target.lm_head
    draft.cos_sin_cache = target.cos_sin_cache
    return draft.eval()


@dataclasses.dataclass
class Draft:
    token_ids: list[int]
    probs: torch.Tensor | None  # [k, vocab] for sampled rows; None for greedy (point masses)


class DraftProposer:
    def __init__(
        self,
        model: CausalLM,
        block_size: int,
        max_batch_tokens: int,
        kv_cache_dtype: torch.dtype | None = None,  # the target's; default: the model's dtype
    ) -> None:
        self.model = model
        self.block_size = block_size
        # Catch-up passes stay under the target's token budget, which sized the activations.
        self.max_batch_tokens = max_batch_tokens
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.kv_cache_dtype = kv_cache_dtype or self.dtype
        self.uploader = InputUploader(self.device)
        self.kv_caches: list[KVCache] = []
        self.graphs: StepGraphs | None = None  # the draft's one-token steps, on CUDA

    def block_bytes(self) -> int:
        return kv_block_bytes(self.model, self.block_size, self.kv_cache_dtype)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.graphs = None  # graphs hold the old cache's addresses
        self.kv_caches = []  # drop the old cache before the new one is allocated
        self.kv_caches = make_kv_caches(
            self.model, num_blocks, self.block_size, self.kv_cache_dtype, self.device
        )

    @torch.inference_mode()
    def propose(
        self,
        items: list[ScheduledSequence],
        rows: list[SamplingRow],
        generator: torch.Generator | None,
    ) -> list[Draft]:
        """Drafts for scheduled decodes; item i asks for items[i].num_spec tokens (>= 1).
        Afterwards the draft's KV holds each item's positions up to start + num_spec."""
        drafts = [Draft([], None) for _ in items]
        probs: list[list[torch.Tensor]] = [[] for _ in items]
        self._catch_up(items)
        # Step 0: the pending token; then one draft token per step.
        batch = [ScheduledSequence(it.seq, 1, it.start, logits_rows=1) for it in items]
        active = list(range(len(items)))
        while active:
            logits = self._logits(batch)
            active_rows = [rows[i] for i in active]
            q = filtered_probs(logits, active_rows)
            tokens = draw(q, active_rows, generator).tolist()
            still, next_batch = [], []
            for j, i in enumerate(active):
                drafts[i].token_ids.append(tokens[j])
                if not rows[i].params.is_greedy:
                    probs[i].append(q[j])
                seq, n = items[i].seq, len(drafts[i].token_ids)
                if n < items[i].num_spec:
                    still.append(i)
                    next_batch.append(ScheduledSequence(
                        seq, 1, items[i].start + n, (tokens[j],), logits_rows=1
                    ))
            active, batch = still, next_batch
        for draft, item_probs in zip(drafts, probs, strict=True):
            if item_probs:
                draft.probs = torch.stack(item_probs)
        return drafts

    def _catch_up(self, items: list[ScheduledSequence]) -> None:
        """Run the draft over positions it has not seen before each pending token, in passes of
        at most max_batch_tokens tokens (a first speculation after a long prompt is a prefill)."""
        computed = {it.seq: it.seq.num_draft_computed for it in items}
        pending = [it for it in items if computed[it.seq] < it.start]
        while pending:
            batch, budget = [], self.max_batch_tokens
            for it in pending:
                if budget <= 0:
                    break
                n = min(it.start - computed[it.seq], budget)
                batch.append(ScheduledSequence(it.seq, n, computed[it.seq], logits_rows=0))
                budget -= n
            inputs = self.uploader.upload(build_host_inputs(batch, self.block_size))
            self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
            for chunk in batch:
                computed[chunk.seq] += chunk.num_new_tokens
            pending = [it for it in pending if computed[it.seq] < it.start]

    def capture_graphs(self, max_num_seqs: int, max_model_len: int, pool: Any = None) -> None:
        """Capture the draft's one-token steps (call after the cache's last allocation)."""
        with torch.inference_mode():
            self.graphs = StepGraphs(self.model, self.kv_caches, max_num_seqs, max_model_len,
                                     self.block_size, 1, pool)  # fmt: skip

    def _logits(self, batch: list[ScheduledSequence]) -> torch.Tensor:
        shape = self.graphs.bucket(batch) if self.graphs is not None else None
        if self.graphs is not None and shape is not None:
            hidden = self.graphs.run(batch, shape, self.uploader)
        else:
            inputs = self.uploader.upload(build_host_inputs(batch, self.block_size))
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
            hidden = hidden[inputs.sample_idx]
        return self.model.compute_logits(hidden)
