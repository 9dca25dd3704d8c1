"""The start-up memory profile on the CPU path: the worst step's activations, the KV budget
they leave, refusals that say what fits (and what they say fits does), and the batch defaults
chosen by device."""

import pytest
import torch

from llm_worker.config import (
    CPU_DEFAULTS,
    GPU_DEFAULTS,
    LARGE_GPU_DEFAULTS,
    DeviceFacts,
    EngineSettings,
    batch_defaults,
    with_batch_defaults,
)
from llm_worker.engine.builder import EngineConfigError
from llm_worker.engine.kv_cache import kv_block_bytes
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.engine.memory_profile import CpuMemory, WorstStep, profile_memory
from llm_worker.engine.tensor_memory import peak_tensor_bytes
from llm_worker.schemas import SamplingParams

MIB = 2**20


def tiny(memory: CpuMemory | None = None, **overrides: object) -> LLMEngine:
    settings = EngineSettings(model="tiny-llama", load_format="dummy", device="cpu",
                              dtype="float32", **overrides)  # type: ignore[arg-type]  # fmt: skip
    return LLMEngine.from_settings(settings, memory)


def _profile(engine: LLMEngine, step: WorstStep, limit: int = 2**40):
    runner = engine.runner
    runner.allocate_kv_cache(1)
    model = runner.model
    held = [*model.parameters(), *(t for kv in runner.kv_caches for t in kv)]
    return profile_memory(CpuMemory(limit), model, runner.kv_caches, runner.block_size, step,
                          held)  # fmt: skip


def test_profile_scales_with_the_settings_and_leaves_the_rest_to_the_cache() -> None:
    engine = tiny(kv_cache_memory_gb=0.01)
    cfg = engine.runner.model.config
    small = _profile(engine, WorstStep(256, 2048, 16))
    large = _profile(engine, WorstStep(1024, 2048, 64))
    # The MLP's gate|up output alone is [tokens, 2 * intermediate] fp32; the logits [rows, vocab].
    assert small.forward_bytes >= 256 * 2 * cfg.intermediate_size * 4
    assert small.sampler_bytes >= 16 * cfg.vocab_size * 4
    assert 3.5 < large.forward_bytes / small.forward_bytes < 8  # linear, plus one long sequence
    assert 3.5 < large.sampler_bytes / small.sampler_bytes < 4.5
    weights = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
    one_block = kv_block_bytes(engine.runner.model, 16, torch.float32)
    assert large.in_use_bytes == weights + one_block
    assert large.kv_budget_bytes == (
        2**40 - large.in_use_bytes - max(large.forward_bytes, large.sampler_bytes)
    )
    # Verifying 4 drafts a sequence samples 5 rows a sequence.
    spec = _profile(engine, WorstStep(1024, 2048, 64, num_spec_tokens=4, draft_probs=True))
    assert spec.sampler_bytes > 4.5 * large.sampler_bytes


def test_shapes_only_forward_allocates_what_the_real_one_does() -> None:
    """The CPU profile skips the forward's arithmetic: the tensors it holds are the same."""
    engine = tiny(kv_cache_memory_gb=0.01)
    runner = engine.runner
    from llm_worker.engine.memory_profile import forward_at_budget

    step = WorstStep(300, 128, 8)  # three sequences of 128 tokens and one of 44

    def forward() -> None:
        forward_at_budget(runner.model, runner.kv_caches, runner.block_size, step)

    with torch.inference_mode():
        real = peak_tensor_bytes(forward)
        shapes_only = peak_tensor_bytes(forward, shapes_only=True)
    assert real == shapes_only > 300 * 2 * runner.model.config.intermediate_size * 4


def test_kv_cache_too_small_for_one_sequence_is_refused_with_what_fits() -> None:
    with pytest.raises(EngineConfigError, match="less than one sequence") as info:
        tiny(kv_cache_memory_gb=0.0001, max_model_len=2048)
    message = str(info.value)
    block_bytes = 2 * 2 * 2 * 32 * 16 * 4  # K and V, 2 layers, 2 KV heads, head_dim 32, fp32
    tokens = int(0.0001 * 2**30) // block_bytes * 16
    assert f"--max-model-len {tokens}" in message and "--kv-cache-memory-gb 0.0" in message
    assert "\n" not in message
    engine = tiny(kv_cache_memory_gb=0.0001, max_model_len=tokens)  # what it said fits, fits
    assert engine.max_model_len == tokens


def test_a_step_that_would_not_fit_the_memory_limit_is_refused_with_what_fits() -> None:
    """Sampling 1,024 rows with every option on takes more than a limit that leaves the cache
    one sequence; fewer rows, as the message says, fit."""
    engine = tiny(kv_cache_memory_gb=0.01)
    knobs = {"max_num_batched_tokens": 64, "max_model_len": 64}
    profile = _profile(engine, WorstStep(64, 64, 1024))
    assert profile.sampler_bytes > 4 * profile.forward_bytes
    one_sequence = 4 * kv_block_bytes(engine.runner.model, 16, torch.float32)
    limit = profile.in_use_bytes + one_sequence + profile.sampler_bytes // 2
    with pytest.raises(EngineConfigError, match="--max-num-seqs") as info:
        tiny(CpuMemory(limit), max_num_seqs=1024, **knobs)
    assert "sampling --max-num-seqs 1024 rows" in str(info.value)
    fits = int(str(info.value).split("--max-num-seqs ")[-1].split(",")[0].split()[0])
    assert 0 < fits < 1024
    engine = tiny(CpuMemory(limit), max_num_seqs=fits, **knobs)
    [out] = engine.generate([[5, 6, 7]], SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(out.output_token_ids) == 3


def test_block_override_past_the_limit_is_refused() -> None:
    engine = tiny(kv_cache_memory_gb=0.01)
    profile = _profile(engine, WorstStep(2048, 2048, 128))
    block_bytes = kv_block_bytes(engine.runner.model, 16, torch.float32)
    limit = profile.in_use_bytes + profile.activation_bytes + 130 * block_bytes
    with pytest.raises(EngineConfigError, match="at most 130 blocks fit"):
        tiny(CpuMemory(limit), num_gpu_blocks_override=131)
    assert tiny(CpuMemory(limit), num_gpu_blocks_override=130).runner.num_blocks == 130


def test_block_override_under_one_sequence_is_refused_with_what_fits() -> None:
    """One block of 16 tokens under --max-model-len 512 would fail every longer request: it is
    refused at start-up, and each setting the message names instead starts an engine."""
    with pytest.raises(EngineConfigError, match="less than one sequence") as info:
        tiny(num_gpu_blocks_override=1, max_model_len=512)
    message = str(info.value)
    assert message.startswith("the KV cache would hold 16 tokens")
    assert "--num-gpu-blocks-override 1 blocks of 16 tokens" in message
    assert "--max-model-len 16" in message and "--num-gpu-blocks-override 32" in message
    assert "\n" not in message
    assert tiny(num_gpu_blocks_override=1, max_model_len=16).max_model_len == 16
    assert tiny(num_gpu_blocks_override=32, max_model_len=512).runner.num_blocks == 32


@pytest.mark.parametrize(("max_num_seqs", "warns"), [(8, True), (4, False)])
def test_the_log_says_how_many_full_length_sequences_the_cache_holds(
    caplog: pytest.LogCaptureFixture, max_num_seqs: int, warns: bool
) -> None:
    """With --max-num-seqs above what the cache holds at --max-model-len, the log says that
    long outputs may be preempted: the figure a user needs to pick the count."""
    with caplog.at_level("INFO", logger="llm_worker.engine.kv_cache_setup"):
        tiny(num_gpu_blocks_override=37, max_model_len=128, max_num_seqs=max_num_seqs)
    [line] = [r.getMessage() for r in caplog.records if "sequences of --max-model-len" in r.message]
    assert line.startswith("KV cache holds 4 sequences of --max-model-len 128 at once")
    assert ("may be preempted" in line) is warns


def test_the_cpu_default_cache_shrinks_to_what_the_limit_leaves() -> None:
    engine = tiny(kv_cache_memory_gb=0.01)
    profile = _profile(engine, WorstStep(2048, 2048, 128))
    block_bytes = kv_block_bytes(engine.runner.model, 16, torch.float32)
    limit = profile.in_use_bytes + profile.activation_bytes + 300 * block_bytes + 5
    assert tiny(CpuMemory(limit)).runner.num_blocks == 300


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (DeviceFacts("cuda", "NVIDIA H100 80GB HBM3", 79 * 2**30 + 600 * MIB), LARGE_GPU_DEFAULTS),
        (DeviceFacts("cuda", "NVIDIA H200", 140 * 2**30), LARGE_GPU_DEFAULTS),
        (DeviceFacts("cuda", "NVIDIA A100-SXM4-80GB", 80 * 2**30), GPU_DEFAULTS),
        (DeviceFacts("cuda", "NVIDIA L4", 22 * 2**30), GPU_DEFAULTS),
        (DeviceFacts("cpu", "", 0), CPU_DEFAULTS),
    ],
)
def test_batch_defaults_by_device(facts: DeviceFacts, expected: object) -> None:
    assert batch_defaults(facts) == expected


def test_defaults_fill_only_what_is_unset_and_reach_the_engine() -> None:
    h100 = DeviceFacts("cuda", "NVIDIA H100 80GB HBM3", 80 * 2**30)
    resolved = with_batch_defaults(EngineSettings(max_num_seqs=64), h100)
    assert (resolved.max_num_seqs, resolved.max_num_batched_tokens) == (64, 8192)
    engine = tiny(kv_cache_memory_gb=0.01)
    config = engine.scheduler.config
    assert (config.max_num_seqs, config.max_num_batched_tokens) == (
        CPU_DEFAULTS.max_num_seqs,
        CPU_DEFAULTS.max_num_batched_tokens,
    )
