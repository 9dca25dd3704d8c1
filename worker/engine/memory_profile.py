"""What the engine needs besides its KV cache, measured by running the worst step its settings
allow, before the cache is sized (vLLM's profile run, plus its CUDA graphs):

- a forward over --max-num-batched-tokens tokens (sequences of at most --max-model-len);
- sampling --max-num-seqs rows (times k + 1 when speculating: every row a verified draft) with
  every option that allocates on: penalties, top-k/p, min-p, min_tokens, seeds, 20 logprobs;
- with CUDA graphs, the pool of every graph the engine will capture, captured once over the
  one-block cache and dropped (graphs hold the cache's addresses, so the real capture comes
  after the cache).

The forward and the sampling run one after the other, never together, so the activations the
cache must leave room for are the larger of the two; the graphs' pool stays held beside them.
On CUDA the caching allocator's reserved bytes are measured (rounding and fragmentation
included); on the CPU, the bytes of the tensors the step's ops return (`tensor_memory`).
"""

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from llm_worker.engine.block_manager import cdiv
from llm_worker.engine.kv_sizing import MemoryProfile
from llm_worker.engine.rejection import VerifyItem, verify
from llm_worker.engine.sampler import SamplingRow, sample
from llm_worker.engine.tensor_memory import peak_tensor_bytes
from llm_worker.models.attention import AttentionMetadata
from llm_worker.models.llama import CausalLM, KVCache
from llm_worker.schemas import SamplingParams

MAX_LOGPROBS = 20  # the most a request may ask for (SamplingParams.logprobs)
WORST_ROW_HISTORY = 64  # tokens of history each profiled row penalises


@dataclass(frozen=True)
class WorstStep:
    num_batched_tokens: int  # --max-num-batched-tokens
    max_model_len: int
    max_num_seqs: int
    num_spec_tokens: int = 0  # k when speculating: k + 1 verified rows a sequence
    draft_probs: bool = False  # a draft model's [k, vocab] distributions ride along


class DeviceMemory(Protocol):
    def limit_bytes(self, in_use: int) -> int: ...
    def in_use_bytes(self, held: list[torch.Tensor]) -> int: ...
    def peak_bytes(self, fn: Callable[[], Any], shapes_only: bool = False) -> int: ...
    def held_bytes(self, fn: Callable[[], Any]) -> int: ...


class CudaMemory:
    """The caching allocator's view, with the driver's for what torch does not hold."""

    def __init__(self, device: torch.device, utilization: float) -> None:
        self.device = device
        self.utilization = utilization

    def _settle(self) -> None:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    def limit_bytes(self, in_use: int) -> int:
        del in_use  # a share of the whole device, whoever holds it now
        return int(torch.cuda.get_device_properties(self.device).total_memory * self.utilization)

    def in_use_bytes(self, held: list[torch.Tensor]) -> int:
        """Everything taken on the device now, by this process or any other."""
        del held  # the driver sees them
        self._settle()
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def peak_bytes(self, fn: Callable[[], Any], shapes_only: bool = False) -> int:
        del shapes_only  # the GPU computes the step for real
        self._settle()
        torch.cuda.reset_peak_memory_stats(self.device)
        start = torch.cuda.memory_reserved(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_reserved(self.device) - start
        self._settle()
        return peak

    def held_bytes(self, fn: Callable[[], Any]) -> int:
        """What `fn` leaves reserved (a graph pool), once the allocator's free cache is gone."""
        self._settle()
        start = torch.cuda.memory_reserved(self.device)
        fn()
        self._settle()
        return torch.cuda.memory_reserved(self.device) - start


class CpuMemory:
    """Tensor bytes. The limit is injected (tests), or what the machine has available plus
    what the engine holds already."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    def limit_bytes(self, in_use: int) -> int:
        return self.limit if self.limit is not None else available_ram_bytes() + in_use

    def in_use_bytes(self, held: list[torch.Tensor]) -> int:
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}
        return sum(storages.values())

    def peak_bytes(self, fn: Callable[[], Any], shapes_only: bool = False) -> int:
        return peak_tensor_bytes(fn, shapes_only)

    def held_bytes(self, fn: Callable[[], Any]) -> int:
        fn()
        return 0


def available_ram_bytes() -> int:
    """MemAvailable of /proc/meminfo: what the machine can give without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def forward_at_budget(
    model: CausalLM, kv_caches: list[KVCache], block_size: int, step: WorstStep
) -> None:
    """A forward over the token budget, in sequences of at most max_model_len: nothing is
    written (every slot -1) and every key is read from block 0 (the cache has one block)."""
    device = model.cos_sin_cache.device
    num_tokens = step.num_batched_tokens
    lens = [step.max_model_len] * (num_tokens // step.max_model_len)
    lens += [num_tokens % step.max_model_len] if num_tokens % step.max_model_len else []
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lens]).to(device)
    meta = AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=device),
        block_tables=torch.zeros(
            (len(lens), cdiv(max(lens), block_size)), dtype=torch.int32, device=device
        ),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        cu_seqlens_q=cu.to(device),
        max_seqlen_q=max(lens),
        max_seqlen_k=max(lens),
    )
    ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
    hidden = model(ids, positions, kv_caches, meta)
    model.compute_logits(hidden[cu[1:].long().to(device) - 1])


def worst_rows(
    num_rows: int, vocab_size: int, blocked_ids: tuple[int, ...], device: torch.device
) -> list[SamplingRow]:
    """Rows that switch on everything sampling allocates for."""
    params = SamplingParams(
        temperature=0.8, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
        frequency_penalty=0.5, presence_penalty=0.5, max_tokens=2, min_tokens=1,
        logprobs=MAX_LOGPROBS,
    )  # fmt: skip
    history = [i % vocab_size for i in range(WORST_ROW_HISTORY)]
    num_prompt_tokens = WORST_ROW_HISTORY // 2
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(num_rows)]
    return [SamplingRow(params, history, num_prompt_tokens, g, blocked_ids) for g in generators]


def sampling_at_max_rows(model: CausalLM, step: WorstStep, blocked_ids: tuple[int, ...]) -> None:
    """Logits and sampling of max_num_seqs rows; with speculation, each sequence verifies k
    drafts (k + 1 rows), with the draft's distributions when a draft model made them."""
    device = model.cos_sin_cache.device
    cfg = model.config
    k = step.num_spec_tokens
    generator = torch.Generator(device=device).manual_seed(0)
    rows = worst_rows(step.max_num_seqs * (k + 1), cfg.vocab_size, blocked_ids, device)
    weight = model.lm_head.weight
    hidden = torch.randn(len(rows), cfg.hidden_size, device=device).to(weight.dtype)
    logits = model.compute_logits(hidden)
    if not k:
        sample(logits, rows, generator)
        return
    items = []
    for i in range(step.max_num_seqs):
        probs = None
        if step.draft_probs:
            probs = torch.softmax(torch.randn(k, cfg.vocab_size, device=device), dim=-1)
        drafts = [(i + j) % cfg.vocab_size for j in range(k)]
        items.append(VerifyItem(rows[i * (k + 1) : (i + 1) * (k + 1)], drafts, probs))
    verify(logits, items, generator)


def profile_memory(
    memory: DeviceMemory,
    model: CausalLM,
    kv_caches: list[KVCache],
    block_size: int,
    step: WorstStep,
    held: list[torch.Tensor],
    capture_graphs: Callable[[], None] | None = None,
) -> MemoryProfile:
    """Run the worst step over `kv_caches` (one block) and `capture_graphs` (whose graphs the
    caller drops after), and say what each part needs; `held` is every tensor the engine holds
    before its cache (weights, a draft's, the one-block caches)."""
    in_use = memory.in_use_bytes(held)
    with torch.inference_mode():
        forward = memory.peak_bytes(
            lambda: forward_at_budget(model, kv_caches, block_size, step), shapes_only=True
        )
        blocked = model.config.eos_token_ids
        sampler = memory.peak_bytes(lambda: sampling_at_max_rows(model, step, blocked))
    graphs = memory.held_bytes(capture_graphs) if capture_graphs is not None else 0
    return MemoryProfile(memory.limit_bytes(in_use), in_use, forward, sampler, graphs)
