"""Settings at the edge (env, .env, CLI flags), frozen dataclasses inside the engine."""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_worker.engine.config import SchedulerConfig

DEFAULT_MODEL = "smollm2"  # the bundled SmolLM2-135M-Instruct


class EngineSettings(BaseSettings):
    """Engine knobs. Flag names follow vLLM's (`--max-num-seqs`); env vars are LLM_WORKER_<NAME>."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_WORKER_", env_file=".env", extra="ignore", frozen=True
    )

    model: str = Field(
        DEFAULT_MODEL,
        description="'smollm2' (bundled), an HF folder, or a named shape with --load-format dummy "
        "(llama3-8b, qwen3-0.6b, qwen3-8b, qwen2-0.5b, tiny-llama)",
    )
    served_model_name: str | None = Field(
        None, description="name jobs may ask for (default: model)"
    )
    load_format: Literal["auto", "dummy"] = Field("auto", description="dummy: random weights")
    tokenizer: Path | None = Field(
        None,
        description="HF folder of a tokenizer for a model without its own (a named shape with "
        "dummy weights); its vocabulary must fit the model's",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU"
    )
    quantization: Literal["fp8", "awq", "gptq", "compressed-tensors"] | None = Field(
        None,
        description="weights as the checkpoint's quantization_config says (default), checked "
        "against this name; fp8 on an unquantized checkpoint quantizes its weights at load",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attention_backend: Literal["auto", "torch", "triton"] = Field(
        "auto", description="auto: triton on CUDA, torch elsewhere"
    )
    fused_ops: bool = Field(
        True, description="triton backend: RMSNorm, rotary and SiLU*mul as fused Triton kernels"
    )
    pdl: bool = Field(
        True,
        description="triton backend on Hopper and later: launch its kernels as programmatic "
        "dependents, each starting while the kernel before it ends",
    )
    block_size: int = Field(16, ge=1, le=256, description="tokens per KV-cache block")
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="fraction of GPU memory for weights, activations and KV"
    )
    kv_cache_memory_gb: float | None = Field(
        None, gt=0.0, description="KV-cache size in GiB (default on CPU: 1)"
    )
    num_gpu_blocks_override: int | None = Field(None, ge=1, description="fix the KV block count")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto",
        description="KV-cache element type: auto (the model's dtype) or fp8 (e4m3: half the "
        "bytes, twice the tokens; k/v scales from the checkpoint, else 1.0); e5m2 is refused",
    )
    max_num_seqs: int | None = Field(
        None,
        ge=1,
        description="sequences in one batch at most (default by device: 512 on GPUs of 70 GiB "
        "or more but A100s, 256 on other GPUs, 128 on CPU)",
    )
    max_model_len: int | None = Field(None, ge=1, description="prompt + output tokens at most")
    max_num_batched_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens computed in one step (default by device: 8192 on GPUs of 70 GiB "
        "or more but A100s, 2048 elsewhere)",
    )
    enable_prefix_caching: bool = Field(True, description="reuse KV of shared prompt prefixes")
    enable_chunked_prefill: bool = Field(True, description="split long prompts across steps")
    enforce_eager: bool = Field(
        False, description="run decode steps eagerly instead of replaying CUDA graphs"
    )
    prefill_graphs: bool = Field(
        True,
        description="also replay CUDA graphs for steps that prefill (token count rounded up to "
        "128 or a multiple of 256, up to --max-num-batched-tokens); without, they run eagerly",
    )
    async_scheduling: bool | None = Field(
        None,
        description="queue step n+1 on the GPU before reading step n's tokens back, so host "
        "work overlaps the GPU (default: on with CUDA, off on CPU); steps that speculate wait",
    )
    speculative_method: Literal["ngram", "draft"] | None = Field(
        None,
        description="speculative decoding: ngram (prompt lookup) or draft (a draft model); "
        "off when not given",
    )
    num_speculative_tokens: int = Field(
        4, ge=1, le=16, description="draft tokens verified per sequence and step"
    )
    speculative_model: str | None = Field(
        None,
        description="draft model (HF folder or named shape; same vocabulary as the target); "
        "or use --speculative-draft-layers",
    )
    speculative_draft_layers: int | None = Field(
        None, ge=1, description="draft = the target's first N layers, its embeddings and head"
    )
    prompt_lookup_max: int = Field(5, ge=1, description="longest n-gram the ngram method matches")
    prompt_lookup_min: int = Field(2, ge=1, description="shortest n-gram the ngram method matches")
    speculative_adaptive: bool = Field(
        True, description="measure throughput with and without speculation, keep the faster"
    )
    speculative_disable_by_batch_size: int | None = Field(
        None, ge=1, description="never speculate with this many sequences decoding or more"
    )
    seed: int = Field(0, description="seed for unseeded sampling and dummy weights")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "llm-worker", description="converted models live here"
    )

    def scheduler_config(self, max_model_len: int) -> SchedulerConfig:
        """The scheduler's knobs, once the model has fixed `max_model_len` and the device the
        batch limits (with_batch_defaults)."""
        if self.max_num_seqs is None or self.max_num_batched_tokens is None:
            raise ValueError("batch limits unset: fill them in with with_batch_defaults first")
        return SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=max_model_len,
            enable_chunked_prefill=self.enable_chunked_prefill,
        )


@dataclass(frozen=True)
class DeviceFacts:
    kind: str  # "cuda" or "cpu"
    name: str  # the GPU's name ("" on CPU)
    memory_bytes: int  # the GPU's memory (0 on CPU)


@dataclass(frozen=True)
class BatchDefaults:
    max_num_seqs: int
    max_num_batched_tokens: int


# vLLM's rule for which GPUs get the large defaults (H100, H200, MI300x; not A100s, where its
# large token budget cost throughput); the values are this engine's: on an H100 the seed
# workload ran 16% faster at 512 / 8192 than at 256 / 2048 (docs/benchmarks.md).
LARGE_GPU_MIN_BYTES = 70 * 2**30
LARGE_GPU_DEFAULTS = BatchDefaults(max_num_seqs=512, max_num_batched_tokens=8192)
GPU_DEFAULTS = BatchDefaults(max_num_seqs=256, max_num_batched_tokens=2048)
CPU_DEFAULTS = BatchDefaults(max_num_seqs=128, max_num_batched_tokens=2048)


def batch_defaults(device: DeviceFacts) -> BatchDefaults:
    if device.kind != "cuda":
        return CPU_DEFAULTS
    if device.memory_bytes >= LARGE_GPU_MIN_BYTES and "a100" not in device.name.lower():
        return LARGE_GPU_DEFAULTS
    return GPU_DEFAULTS


def with_batch_defaults(settings: EngineSettings, device: DeviceFacts) -> EngineSettings:
    """The settings with the batch limits they leave unset filled in for `device`."""
    defaults = batch_defaults(device)
    return settings.model_copy(
        update={
            "max_num_seqs": settings.max_num_seqs or defaults.max_num_seqs,
            "max_num_batched_tokens": settings.max_num_batched_tokens
            or defaults.max_num_batched_tokens,
        }
    )


def add_settings_arguments(
    parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]
) -> None:
    """Expose every field as `--kebab-case`; flags left out fall back to env, .env, default."""
    for name, field in settings_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = " ".join(filter(None, (field.description, _default_note(field.default))))
        if field.annotation in (bool, bool | None):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)


def _default_note(default: object) -> str:
    """None says nothing a reader can use: such fields say their default in the description."""
    if default is None:
        return ""
    if isinstance(default, bool):
        return f"(default: {'on' if default else 'off'})"
    return f"(default: {default})"


def settings_from_args(settings_cls: type[BaseSettings], args: argparse.Namespace) -> Any:
    given = {
        name: getattr(args, name)
        for name in settings_cls.model_fields
        if getattr(args, name, None) is not None
    }
    return settings_cls(**given)
