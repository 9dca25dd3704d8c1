"""The KV cache's set-up at start-up: profile the worst step over one-block caches (and the CUDA
graphs, captured once and dropped), size the cache from what that leaves, allocate it, then
capture the graphs over it for good."""

import gc
import logging
from collections.abc import Callable

import torch

from llm_worker.config import EngineSettings
from llm_worker.engine.block_manager import cdiv
from llm_worker.engine.draft import DraftProposer
from llm_worker.engine.kv_cache import kv_block_bytes
from llm_worker.engine.kv_sizing import KVCacheRequest, num_kv_blocks
from llm_worker.engine.memory_profile import (
    DeviceMemory,
    MemoryProfile,
    WorstStep,
    profile_memory,
)
from llm_worker.engine.model_runner import ModelRunner
from llm_worker.models.kv_cache_format import KVCacheFormat

log = logging.getLogger(__name__)


def _worst_step(settings: EngineSettings, max_model_len: int) -> WorstStep:
    spec = settings.speculative_method is not None
    return WorstStep(
        num_batched_tokens=settings.max_num_batched_tokens or 1,
        max_model_len=max_model_len,
        max_num_seqs=settings.max_num_seqs or 1,
        num_spec_tokens=settings.num_speculative_tokens if spec else 0,
        draft_probs=settings.speculative_method == "draft",
    )


def _graph_capture(
    settings: EngineSettings, runner: ModelRunner, max_model_len: int, draft: DraftProposer | None
) -> Callable[[], None] | None:
    """What captures every CUDA graph over the runner's current cache, or None without graphs."""
    capturable = runner.model.backend.graph_capturable
    if runner.device.type != "cuda" or settings.enforce_eager or not capturable:
        return None
    max_num_seqs = settings.max_num_seqs or 1
    spec = settings.speculative_method is not None
    verify_tokens = settings.num_speculative_tokens + 1 if spec else 0
    prefill_tokens = (settings.max_num_batched_tokens or 0) if settings.prefill_graphs else 0

    def capture() -> None:
        pool = runner.capture_graphs(max_num_seqs, max_model_len, verify_tokens, prefill_tokens)
        if draft is not None:
            draft.capture_graphs(max_num_seqs, max_model_len, pool)

    return capture


def allocate_caches(runner: ModelRunner, draft: DraftProposer | None, num_blocks: int) -> None:
    """The caches of num_blocks blocks (dropping any graph captured over the old ones)."""
    runner.allocate_kv_cache(num_blocks)
    if draft is not None:
        draft.allocate_kv_cache(num_blocks)
    if runner.device.type == "cuda":  # the dropped graphs' pool goes back to the device
        gc.collect()
        torch.cuda.empty_cache()


def _profile(
    settings: EngineSettings,
    runner: ModelRunner,
    max_model_len: int,
    draft: DraftProposer | None,
    memory: DeviceMemory,
) -> MemoryProfile:
    """The worst step over one-block caches, and the graphs' pool, captured once and dropped."""
    allocate_caches(runner, draft, 1)
    model = runner.model
    held = [*model.parameters(), *model.buffers(), *(t for kv in runner.kv_caches for t in kv)]
    if draft is not None:
        held += [*draft.model.parameters(), *(t for kv in draft.kv_caches for t in kv)]
    step = _worst_step(settings, max_model_len)
    capture = _graph_capture(settings, runner, max_model_len, draft)
    profile = profile_memory(memory, model, runner.kv_caches, runner.block_size, step, held,
                             capture)  # fmt: skip
    allocate_caches(runner, draft, 1)
    return profile


def size_kv_cache(
    settings: EngineSettings,
    runner: ModelRunner,
    max_model_len: int,
    draft: DraftProposer | None,
    memory: DeviceMemory,
) -> tuple[int, MemoryProfile]:
    """The cache's block count (KVCacheDoesNotFit where the settings leave too little), the
    caches allocated and the graphs captured; and the profile it came from."""
    profile = _profile(settings, runner, max_model_len, draft, memory)
    block_bytes = kv_block_bytes(runner.model, settings.block_size, runner.kv_cache_dtype)
    block_bytes += draft.block_bytes() if draft is not None else 0  # shares block ids
    request = KVCacheRequest(
        block_bytes=block_bytes,
        block_size=settings.block_size,
        max_model_len=max_model_len,
        max_num_seqs=settings.max_num_seqs or 1,
        max_num_batched_tokens=settings.max_num_batched_tokens or 1,
        on_cuda=runner.device.type == "cuda",
        gpu_memory_utilization=settings.gpu_memory_utilization,
        kv_cache_memory_gb=settings.kv_cache_memory_gb,
        num_blocks_override=settings.num_gpu_blocks_override,
    )
    num_blocks = num_kv_blocks(request, profile)
    allocate_caches(runner, draft, num_blocks)
    capture = _graph_capture(settings, runner, max_model_len, draft)
    if capture is not None:
        capture()
    return num_blocks, profile


def log_kv_cache(
    settings: EngineSettings,
    num_blocks: int,
    max_model_len: int,
    kv_format: KVCacheFormat,
    backend_name: str,
    profile: MemoryProfile,
) -> None:
    block_size = settings.block_size
    log.info(
        "KV cache: %d blocks of %d tokens (%d tokens), %s, scales %s, %s backend",
        num_blocks, block_size, num_blocks * block_size, kv_format.name, kv_format.scales_from,
        backend_name,
    )  # fmt: skip
    full_length = num_blocks // cdiv(max_model_len, block_size)
    max_num_seqs = settings.max_num_seqs or 0
    more = max_num_seqs > full_length
    log.info("KV cache holds %d sequences of --max-model-len %d at once (--max-num-seqs %d%s)",
             full_length, max_model_len, max_num_seqs,
             ": more, so sequences whose outputs run long may be preempted and recomputed"
             if more else "")  # fmt: skip
    gib = 2**30
    log.info(
        "memory: limit %.2f GiB, held before the cache %.2f, worst step %.2f (forward of %d "
        "tokens %.2f, sampling %d rows %.2f), CUDA graphs %.2f, left for the cache %.2f",
        profile.limit_bytes / gib, profile.in_use_bytes / gib, profile.activation_bytes / gib,
        settings.max_num_batched_tokens, profile.forward_bytes / gib, settings.max_num_seqs,
        profile.sampler_bytes / gib, profile.graph_bytes / gib, profile.kv_budget_bytes / gib,
    )  # fmt: skip
