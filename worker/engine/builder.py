"""Builds an LLMEngine's parts from settings: device, dtype, weights, KV-cache size, tokenizer."""

import gc
import logging
from dataclasses import dataclass
from typing import Any

import torch

from llm_worker.config import EngineSettings
from llm_worker.engine.block_manager import BlockManager, cdiv
from llm_worker.engine.draft import DraftProposer, truncated_copy
from llm_worker.engine.kv_cache import kv_block_bytes
from llm_worker.engine.model_runner import ModelRunner
from llm_worker.engine.ngram import NgramProposer
from llm_worker.engine.scheduler import Scheduler
from llm_worker.engine.speculative import SpecConfig, Speculator
from llm_worker.engine.update import Updater
from llm_worker.models.attention import AttentionBackend, get_backend
from llm_worker.models.config import ModelConfig
from llm_worker.models.llama import CausalLM
from llm_worker.models.loader import load_model, resolve

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_CPU_KV_CACHE_GB = 1.0


class EngineConfigError(ValueError):
    """The settings cannot give a working engine; the message names the knobs to turn."""


@dataclass(frozen=True)
class EngineParts:
    """What an LLMEngine is made of (LLMEngine.from_settings builds them here)."""

    runner: ModelRunner
    updater: Updater
    tokenizer: Any  # None: the model has no tokenizer
    model_id: str
    speculator: Speculator | None
    async_scheduling: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _num_blocks(
    settings: EngineSettings, runner: ModelRunner, max_model_len: int, draft_block_bytes: int
) -> int:
    block_bytes = kv_block_bytes(runner.model, settings.block_size, runner.dtype)
    block_bytes += draft_block_bytes  # a draft model's cache shares the target's block ids
    if settings.num_gpu_blocks_override is not None:
        return settings.num_gpu_blocks_override
    if settings.kv_cache_memory_gb is not None or runner.device.type != "cuda":
        gb = settings.kv_cache_memory_gb or DEFAULT_CPU_KV_CACHE_GB
        return max(1, int(gb * 2**30) // block_bytes)
    num_profile_tokens = min(settings.max_num_batched_tokens, max_model_len)
    peak = runner.profile_peak_bytes(num_profile_tokens)
    total = torch.cuda.get_device_properties(runner.device).total_memory
    budget = int(total * settings.gpu_memory_utilization) - peak
    num_blocks = budget // block_bytes
    if num_blocks < cdiv(max_model_len, settings.block_size):
        raise _too_small(settings, max_model_len, max(num_blocks, 0) * settings.block_size)
    return num_blocks


def _too_small(settings: EngineSettings, max_model_len: int, num_tokens: int) -> EngineConfigError:
    return EngineConfigError(
        f"the KV cache would hold {num_tokens} tokens, less than one sequence of "
        f"--max-model-len {max_model_len}: raise --gpu-memory-utilization "
        f"(now {settings.gpu_memory_utilization}) or lower --max-model-len"
    )


def _size_kv_cache(
    settings: EngineSettings,
    runner: ModelRunner,
    max_model_len: int,
    draft: DraftProposer | None = None,
) -> int:
    """Profile, allocate the cache, capture decode graphs; a CUDA OOM names the knobs instead."""
    try:
        draft_bytes = draft.block_bytes() if draft is not None else 0
        num_blocks = _num_blocks(settings, runner, max_model_len, draft_bytes)
        runner.allocate_kv_cache(num_blocks)
        if draft is not None:
            draft.allocate_kv_cache(num_blocks)
        capturable = runner.model.backend.graph_capturable
        if runner.device.type == "cuda" and not settings.enforce_eager and capturable:
            spec = settings.speculative_method is not None
            verify_tokens = settings.num_speculative_tokens + 1 if spec else 0
            prefill_tokens = settings.max_num_batched_tokens if settings.prefill_graphs else 0
            pool = runner.capture_graphs(
                settings.max_num_seqs, max_model_len, verify_tokens, prefill_tokens
            )
            if draft is not None:
                draft.capture_graphs(settings.max_num_seqs, max_model_len, pool)
    except torch.cuda.OutOfMemoryError as exc:
        runner.allocate_kv_cache(1)  # give the memory back before raising
        if draft is not None:
            draft.allocate_kv_cache(1)
        raise EngineConfigError(
            f"out of GPU memory at start-up ({exc.args[0].splitlines()[0]}): the weights, "
            f"activations of --max-num-batched-tokens {settings.max_num_batched_tokens} and a "
            f"KV cache for one sequence of --max-model-len {max_model_len} must fit in "
            f"--gpu-memory-utilization {settings.gpu_memory_utilization} of the GPU; lower "
            "--max-model-len or --max-num-batched-tokens, raise --gpu-memory-utilization, or "
            "pass --enforce-eager (no CUDA graphs)"
        ) from exc
    return num_blocks


def freeze_startup_heap() -> None:
    """Move what start-up allocated (modules, compiled kernels, tokenizer: on the order of a
    million objects) out of the cyclic collector's reach, so that a full collection while
    serving does not walk all of it and stall a step. For a process that serves one engine for
    its lifetime: a reference cycle frozen with a dropped engine would keep its tensors alive
    (`gc.unfreeze()` first, as `worker.bench.release_gpu_memory` does)."""
    gc.collect()
    gc.freeze()


def build_parts(settings: EngineSettings) -> EngineParts:
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    source = resolve(settings.model, settings.cache_dir)
    model_cfg = ModelConfig.from_hf(source.hf_config)
    max_model_len = settings.max_model_len or model_cfg.max_position_embeddings
    if max_model_len > model_cfg.max_position_embeddings:
        log.warning(
            "max_model_len %d is past the model's %d positions",
            max_model_len,
            model_cfg.max_position_embeddings,
        )
    backend = get_backend(settings.attention_backend, device, settings.fused_ops, settings.pdl)
    model = load_model(
        source,
        backend,
        dtype,
        device,
        dummy=settings.load_format == "dummy",
        seed=settings.seed,
        max_position=max_model_len,
    )
    runner = ModelRunner(model, settings.block_size, settings.seed)
    speculator = _build_speculator(settings, model, backend, max_model_len)
    draft = speculator.draft if speculator is not None else None
    num_blocks = _size_kv_cache(settings, runner, max_model_len, draft)
    log.info(
        "KV cache: %d blocks of %d tokens (%d tokens), %s backend",
        num_blocks,
        settings.block_size,
        num_blocks * settings.block_size,
        backend.name,
    )
    model_id = settings.served_model_name or settings.model
    scheduler = Scheduler(
        settings.scheduler_config(max_model_len),
        BlockManager(num_blocks, settings.block_size, settings.enable_prefix_caching, model_id),
    )
    async_scheduling = settings.async_scheduling
    if async_scheduling is None:
        async_scheduling = device.type == "cuda"
    return EngineParts(
        runner,
        Updater(scheduler, model_cfg.eos_token_ids, max_model_len),
        _load_tokenizer(source),
        model_id,
        speculator,
        async_scheduling,
    )


def _build_speculator(
    settings: EngineSettings, target: CausalLM, backend: AttentionBackend, max_model_len: int
) -> Speculator | None:
    method = settings.speculative_method
    if method is None:
        if settings.speculative_model or settings.speculative_draft_layers:
            raise EngineConfigError("a draft model was given without --speculative-method draft")
        return None
    config = SpecConfig(
        method=method,
        num_speculative_tokens=settings.num_speculative_tokens,
        adaptive=settings.speculative_adaptive,
        disable_by_batch_size=settings.speculative_disable_by_batch_size,
    )
    if method == "ngram":
        if settings.prompt_lookup_min > settings.prompt_lookup_max:
            raise EngineConfigError(
                f"--prompt-lookup-min ({settings.prompt_lookup_min}) exceeds "
                f"--prompt-lookup-max ({settings.prompt_lookup_max})"
            )
        ngram = NgramProposer(settings.prompt_lookup_min, settings.prompt_lookup_max)
        log.info("speculative decoding: ngram, k=%d", config.num_speculative_tokens)
        return Speculator(config, ngram=ngram)
    draft_model = _load_draft(settings, target, backend, max_model_len)
    log.info(
        "speculative decoding: draft model of %d layers, k=%d",
        draft_model.config.num_layers,
        config.num_speculative_tokens,
    )
    proposer = DraftProposer(draft_model, settings.block_size, settings.max_num_batched_tokens)
    return Speculator(config, draft=proposer)


def _load_draft(
    settings: EngineSettings, target: CausalLM, backend: AttentionBackend, max_model_len: int
) -> CausalLM:
    if (settings.speculative_model is None) == (settings.speculative_draft_layers is None):
        raise EngineConfigError(
            "--speculative-method draft needs exactly one of --speculative-model and "
            "--speculative-draft-layers"
        )
    if settings.speculative_draft_layers is not None:
        try:
            return truncated_copy(target, settings.speculative_draft_layers)
        except ValueError as exc:
            raise EngineConfigError(f"--speculative-draft-layers: {exc}") from exc
    param = next(target.parameters())
    source = resolve(settings.speculative_model or "", settings.cache_dir)
    draft = load_model(
        source,
        backend,
        param.dtype,
        param.device,
        dummy=settings.load_format == "dummy",
        seed=settings.seed + 1,
        max_position=max_model_len,
    )
    if draft.config.vocab_size != target.config.vocab_size:
        raise EngineConfigError(
            f"the draft's vocabulary ({draft.config.vocab_size}) differs from the target's "
            f"({target.config.vocab_size}): it must share the tokenizer"
        )
    return draft


def _load_tokenizer(source: Any) -> Any:
    if not source.has_tokenizer:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.folder)
