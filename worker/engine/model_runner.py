"""Runs a planned step on the model and gives back a StepResult.

Inputs go to the device (step_inputs), the model runs over the paged KV cache (a CUDA graph is
replayed where one fits the step: cuda_graphs), and the sampled positions' logits are sampled,
either read back at once (`execute`) or left on the device for the next step to read
(`launch`, async scheduling). A sampling row that raises fails its own request only: the batch
is sampled again row by row to find it.
"""

from collections.abc import Mapping
from typing import Any

import torch

from llm_worker.engine.cuda_graphs import GraphSet, StepGraphs, prefill_token_buckets
from llm_worker.engine.faults import NO_FAULTS, isolating_faults
from llm_worker.engine.kv_cache import make_kv_caches
from llm_worker.engine.sampler import SamplingRow, device_tensor, sample, sample_ids
from llm_worker.engine.sequence import SampledToken, ScheduledSequence, Sequence, cdiv
from llm_worker.engine.step_inputs import InputUploader, StepInputs, build_host_inputs
from llm_worker.engine.step_mask import StepMask
from llm_worker.engine.step_result import PendingInputs, StepResult
from llm_worker.models.attention import AttentionMetadata
from llm_worker.models.llama import CausalLM, KVCache

_NO_TOKEN = torch.zeros(1, dtype=torch.int64)  # stands in for a failed row's token


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


def fill_pending(input_ids: torch.Tensor, pending: PendingInputs) -> None:
    """Overwrite, on the device, the input ids that are tokens of the step in flight."""
    assert isinstance(pending.tokens, AsyncTokens)
    device = input_ids.device
    source = pending.tokens.device_ids
    tokens = source.index_select(0, device_tensor(pending.source_idx, device, torch.int64))
    input_ids.index_copy_(0, device_tensor(pending.rows, device, torch.int64), tokens)


def _faults_by_seq(
    scheduled: list[ScheduledSequence], faults: Mapping[int, str], mask: StepMask | None
) -> Mapping[Sequence, str]:
    """Sampling-row faults keyed by their sequences, with the grammar mask's."""
    mask_faults = mask.faults if mask is not None else NO_FAULTS
    if not faults and not mask_faults:
        return NO_FAULTS
    sampling = [item.seq for item in scheduled if item.samples]
    return {**mask_faults, **{sampling[i]: message for i, message in faults.items()}}


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
        self.graphs: GraphSet | None = None  # None: every step runs eagerly
        self.allocate_kv_cache(1)

    def seeded_generator(self, seed: int) -> torch.Generator:
        """A request's own generator, so its draws do not depend on what shares its batch."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.graphs = None  # graphs hold the old cache's addresses
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
            decode = StepGraphs(*args)
            verify = StepGraphs(*args, verify_tokens, decode.pool) if verify_tokens > 1 else None
            prefill = None
            if prefill_tokens > 0:
                pool = (verify or decode).pool
                buckets = prefill_token_buckets(prefill_tokens)
                prefill = StepGraphs(*args, prefill_tokens, pool, buckets)
        self.graphs = GraphSet(decode, verify, prefill)
        return self.graphs.pool

    def prepare(self, scheduled: list[ScheduledSequence]) -> StepInputs:
        """Eager-step inputs on the device (the CPU test compares them with list-built ones)."""
        return self.uploader.upload(build_host_inputs(scheduled, self.block_size))

    def _forward(
        self, scheduled: list[ScheduledSequence], pending: PendingInputs | None
    ) -> torch.Tensor:
        """Hidden states of the sampled positions: replayed from a CUDA graph where a family
        has one for the step, else run eagerly."""
        fill = None if pending is None else lambda ids: fill_pending(ids, pending)
        found = self.graphs.find(scheduled) if self.graphs is not None else None
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
        pending: PendingInputs | None = None,
        mask: StepMask | None = None,
    ) -> StepResult:
        """Run one step and read its tokens back; `rows` are the sampling rows of the items
        whose `samples` is True; `mask`: the grammar's, applied before sampling."""
        hidden = self._forward(scheduled, pending)
        sampled: list[SampledToken] = []
        faults = NO_FAULTS
        if rows:
            logits = self._masked(self.model.compute_logits(hidden), mask)
            sampled, faults = isolating_faults(
                lambda: sample(logits, rows, self.generator),
                len(rows),
                lambda i: sample(logits[i : i + 1], rows[i : i + 1], self.generator)[0],
                lambda parts: [SampledToken(0) if t is None else t for t in parts],
            )
        emitted = iter(sampled)
        tokens = [[next(emitted)] if item.samples else [] for item in scheduled]
        return StepResult(scheduled, tokens=tokens, faults=_faults_by_seq(scheduled, faults, mask))

    @torch.inference_mode()
    def launch(
        self,
        scheduled: list[ScheduledSequence],
        rows: list[SamplingRow],
        pending: PendingInputs | None = None,
        mask: StepMask | None = None,
    ) -> StepResult:
        """Queue one step and its sampling on the device and return at once: the tokens come
        back through a non-blocking copy (async scheduling). Rows must not need the host's
        token history (sampler.needs_host_history)."""
        return self.launch_sampling(scheduled, rows, self.logits(scheduled, pending), mask)

    @torch.inference_mode()
    def launch_sampling(
        self,
        scheduled: list[ScheduledSequence],
        rows: list[SamplingRow],
        logits: torch.Tensor,
        mask: StepMask | None = None,
    ) -> StepResult:
        """`launch` for a step whose forward is already queued (`logits`): the host fills a
        grammar's mask while the device runs the forward, then queues the sampling."""
        logits = self._masked(logits, mask)
        ids, faults = isolating_faults(
            lambda: sample_ids(logits, rows, self.generator),
            len(rows),
            lambda i: sample_ids(logits[i : i + 1], rows[i : i + 1], self.generator),
            lambda parts: torch.cat(
                [_NO_TOKEN.to(logits.device) if p is None else p for p in parts]
            ),
        )
        return StepResult(
            scheduled,
            in_flight=AsyncTokens(ids),
            faults=_faults_by_seq(scheduled, faults, mask),
        )

    @staticmethod
    def _masked(logits: torch.Tensor, mask: StepMask | None) -> torch.Tensor:
        if mask is not None:
            mask.apply_(logits)
        return logits

    @torch.inference_mode()
    def logits(
        self, scheduled: list[ScheduledSequence], pending: PendingInputs | None = None
    ) -> torch.Tensor:
        """A step returning the logits of every item's trailing `num_logits_rows` positions
        (all k + 1 of a sequence verifying k drafts), in item order."""
        return self.model.compute_logits(self._forward(scheduled, pending))

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
