"""Builds an LLMEngine's parts from settings: device, dtype, weights, KV-cache size, tokenizer."""

import contextlib
import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm_worker.config import DeviceFacts, EngineSettings, with_batch_defaults
from llm_worker.engine.block_manager import BlockManager
from llm_worker.engine.config import EngineConfigError
from llm_worker.engine.draft import DraftProposer, truncated_copy
from llm_worker.engine.kv_cache_setup import allocate_caches, log_kv_cache, size_kv_cache
from llm_worker.engine.kv_sizing import KVCacheDoesNotFit
from llm_worker.engine.memory_profile import CpuMemory, CudaMemory, DeviceMemory
from llm_worker.engine.model_runner import ModelRunner
from llm_worker.engine.ngram import NgramProposer
from llm_worker.engine.scheduler import Scheduler
from llm_worker.engine.speculative import SpecConfig, Speculator
from llm_worker.engine.update import Updater
from llm_worker.models.attention import AttentionBackend, get_backend
from llm_worker.models.bundled import BundledModelMissing
from llm_worker.models.config import ModelConfig
from llm_worker.models.kv_cache_format import (
    KVCacheFormat,
    KVCacheFormatError,
    apply_kv_scales,
    resolve_kv_cache_format,
)
from llm_worker.models.llama import CausalLM
from llm_worker.models.loader import ModelNotFound, load_model, resolve
from llm_worker.models.quant.config import UnsupportedQuantization
from llm_worker.models.quant.linear import CheckpointMismatch
from llm_worker.structured.backend import StructuredOutputBackend, StructuredOutputConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineParts:
    """What an LLMEngine is made of (LLMEngine.from_settings builds them here)."""

    runner: ModelRunner
    updater: Updater
    tokenizer: Any  # None: the model has no tokenizer
    model_id: str
    speculator: Speculator | None
    async_scheduling: bool
    structured: StructuredOutputBackend | None = None  # None: no tokenizer, no constraints


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


def device_facts(device: torch.device) -> DeviceFacts:
    if device.type != "cuda":
        return DeviceFacts("cpu", "", 0)
    props = torch.cuda.get_device_properties(device)
    return DeviceFacts("cuda", props.name, props.total_memory)


def _with_device_defaults(settings: EngineSettings, device: torch.device) -> EngineSettings:
    facts = device_facts(device)
    resolved = with_batch_defaults(settings, facts)
    log.info(
        "batch limits: --max-num-seqs %d%s, --max-num-batched-tokens %d%s",
        resolved.max_num_seqs,
        "" if settings.max_num_seqs else " (default)",
        resolved.max_num_batched_tokens,
        "" if settings.max_num_batched_tokens else " (default)",
    )
    if facts.kind == "cuda" and not (settings.max_num_seqs and settings.max_num_batched_tokens):
        log.info("defaults for %s, %.1f GiB", facts.name, facts.memory_bytes / 2**30)
    return resolved


@contextlib.contextmanager
def _model_refusals() -> Iterator[None]:
    """A model that cannot be found or run as asked (missing, an unsupported quantization, a
    checkpoint that does not fit its config) becomes an EngineConfigError with its message."""
    try:
        yield
    except (ModelNotFound, BundledModelMissing, UnsupportedQuantization, CheckpointMismatch) as exc:
        raise EngineConfigError(str(exc)) from exc


@contextlib.contextmanager
def _start_up_memory_errors(
    settings: EngineSettings, runner: ModelRunner, max_model_len: int, draft: DraftProposer | None
) -> Iterator[None]:
    """Settings that leave too little, and a CUDA OOM at start-up, become one EngineConfigError
    that names the knobs."""
    try:
        yield
    except KVCacheDoesNotFit as exc:
        raise EngineConfigError(str(exc)) from exc
    except torch.cuda.OutOfMemoryError as exc:
        allocate_caches(runner, draft, 1)  # give the memory back before raising
        raise EngineConfigError(
            f"out of GPU memory at start-up ({exc.args[0].splitlines()[0]}): the weights, "
            f"activations of --max-num-batched-tokens {settings.max_num_batched_tokens} and a "
            f"KV cache for one sequence of --max-model-len {max_model_len} must fit in "
            f"--gpu-memory-utilization {settings.gpu_memory_utilization} of the GPU; lower "
            "--max-model-len or --max-num-batched-tokens, raise --gpu-memory-utilization, or "
            "pass --enforce-eager (no CUDA graphs)"
        ) from exc


def freeze_startup_heap() -> None:
    """Move what start-up allocated (modules, compiled kernels, tokenizer: on the order of a
    million objects) out of the cyclic collector's reach, so that a full collection while
    serving does not walk all of it and stall a step. For a process that serves one engine for
    its lifetime: a reference cycle frozen with a dropped engine would keep its tensors alive
    (`gc.unfreeze()` first, as `worker.bench.release_gpu_memory` does)."""
    gc.collect()
    gc.freeze()


def build_parts(settings: EngineSettings, memory: DeviceMemory | None = None) -> EngineParts:
    """`memory`: where the KV-cache size comes from (default: the device's own figures)."""
    device = resolve_device(settings.device)
    settings = _with_device_defaults(settings, device)
    dtype = resolve_dtype(settings.dtype, device)
    with _model_refusals():
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
    with _model_refusals():
        model = load_model(
            source,
            backend,
            dtype,
            device,
            dummy=settings.load_format == "dummy",
            seed=settings.seed,
            max_position=max_model_len,
            quantization=settings.quantization,
        )
    kv_format = _kv_cache_format(settings, model, source.folder)
    runner = ModelRunner(model, settings.block_size, settings.seed, kv_format.dtype)
    speculator = _build_speculator(settings, model, backend, max_model_len, kv_format.dtype)
    draft = speculator.draft if speculator is not None else None
    if memory is None:
        on_cuda = device.type == "cuda"
        memory = CudaMemory(device, settings.gpu_memory_utilization) if on_cuda else CpuMemory()
    with _start_up_memory_errors(settings, runner, max_model_len, draft):
        num_blocks, profile = size_kv_cache(settings, runner, max_model_len, draft, memory)
    log_kv_cache(settings, num_blocks, max_model_len, kv_format, backend.name, profile)
    model_id = settings.served_model_name or settings.model
    scheduler = Scheduler(
        settings.scheduler_config(max_model_len),
        BlockManager(num_blocks, settings.block_size, settings.enable_prefix_caching, model_id),
    )
    async_scheduling = settings.async_scheduling
    if async_scheduling is None:
        async_scheduling = device.type == "cuda"
    tokenizer = _load_tokenizer(source, settings.tokenizer, model_cfg.vocab_size)
    return EngineParts(
        runner,
        Updater(scheduler, model_cfg.eos_token_ids, max_model_len),
        tokenizer,
        model_id,
        speculator,
        async_scheduling,
        _structured_backend(settings, tokenizer, model_cfg, speculator, device),
    )


def _structured_backend(
    settings: EngineSettings,
    tokenizer: Any,
    model_cfg: ModelConfig,
    speculator: Speculator | None,
    device: torch.device,
) -> StructuredOutputBackend | None:
    """The grammar backend, for a model with a tokenizer: a step masks at most every
    sequence's rows, k + 1 of them each when speculating."""
    if tokenizer is None:
        return None
    assert settings.max_num_seqs is not None  # set by with_batch_defaults
    rows_per_seq = 1 + (speculator.config.num_speculative_tokens if speculator else 0)
    config = StructuredOutputConfig(
        max_rows=settings.max_num_seqs * rows_per_seq, pin_memory=device.type == "cuda"
    )
    return StructuredOutputBackend.create(
        tokenizer, model_cfg.vocab_size, model_cfg.eos_token_ids, config
    )


def _kv_cache_format(
    settings: EngineSettings, model: CausalLM, folder: Path | None
) -> KVCacheFormat:
    """The cache's dtype and, for FP8, each layer's scales, set on the model's layers."""
    param = next(model.parameters())
    try:
        kv_format = resolve_kv_cache_format(
            settings.kv_cache_dtype, param.dtype, param.device,
            folder if settings.load_format != "dummy" else None, model.config.num_layers,
        )  # fmt: skip
    except KVCacheFormatError as exc:
        raise EngineConfigError(str(exc)) from exc
    apply_kv_scales(model, kv_format.scales)
    return kv_format


def _build_speculator(
    settings: EngineSettings,
    target: CausalLM,
    backend: AttentionBackend,
    max_model_len: int,
    kv_cache_dtype: torch.dtype,
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
    # The target's cache dtype: the same bytes per token, the same memory plan for both.
    proposer = DraftProposer(
        draft_model, settings.block_size, settings.max_num_batched_tokens or 1, kv_cache_dtype
    )
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


def _load_tokenizer(source: Any, tokenizer_dir: Path | None, vocab_size: int) -> Any:
    """The model's own tokenizer, or `tokenizer_dir`'s (--tokenizer: one for a named shape
    with dummy weights, which must fit its vocabulary); None when there is neither."""
    if tokenizer_dir is None and not source.has_tokenizer:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or source.folder)
    except (OSError, ValueError) as exc:
        raise EngineConfigError(f"--tokenizer {tokenizer_dir}: {exc}") from exc
    if tokenizer_dir is not None and len(tokenizer) > vocab_size:
        raise EngineConfigError(
            f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary "
            f"({vocab_size})"
        )
    return tokenizer
