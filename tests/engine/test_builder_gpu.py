"""The KV-cache set-up on CUDA: FP8 caches hold twice the blocks under the same utilization,
CUDA graphs over them give the eager tokens, and the worst step the settings allow runs inside
--gpu-memory-utilization (no out-of-memory after start-up)."""

import gc
from pathlib import Path

import pytest
import torch

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.schemas import SamplingParams
from tests.near_ties import assert_agree_up_to_near_ties

pytestmark = pytest.mark.gpu


def engine(**overrides: object) -> LLMEngine:
    settings = {"load_format": "dummy", "device": "cuda", **overrides}
    return LLMEngine.from_settings(EngineSettings.model_validate(settings))


def _num_blocks(**overrides: object) -> tuple[int, torch.dtype]:
    """Built and dropped here, so that the next engine finds the GPU as this one found it."""
    e = engine(**overrides)
    found = e.runner.num_blocks, e.runner.kv_caches[0][0].dtype
    e.runner.allocate_kv_cache(1)
    del e
    gc.collect()
    torch.cuda.empty_cache()
    return found


def test_fp8_doubles_the_blocks_under_the_same_utilization() -> None:
    common = {"model": "qwen3-0.6b", "gpu_memory_utilization": 0.3, "max_model_len": 4096,
              "max_num_seqs": 64, "max_num_batched_tokens": 2048}  # fmt: skip
    num_bf16, _ = _num_blocks(**common)
    num_fp8, dtype = _num_blocks(**common, kv_cache_dtype="fp8")
    assert dtype == torch.float8_e4m3fn
    assert 1.95 * num_bf16 <= num_fp8 <= 2.05 * num_bf16


def test_graphs_over_an_fp8_cache_give_the_eager_tokens() -> None:
    """Graphs pad a step to a captured batch size, where the GEMMs may round bf16 differently;
    an FP8 cache turns such a difference into a whole e4m3 step of a key now and then. So the
    tokens agree up to a near tie: where they first differ, the graphs' token is the eager run's
    second choice, within a small margin of its first."""
    common = {"model": "tiny-llama", "dtype": "bfloat16", "kv_cache_dtype": "fp8",
              "max_num_seqs": 16, "max_model_len": 512, "kv_cache_memory_gb": 0.05}  # fmt: skip
    prompts = [[(7 * i + 3 * j) % 400 + 10 for j in range(5 + 40 * i)] for i in range(9)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    eager = engine(**common, enforce_eager=True, async_scheduling=False)
    want = eager.generate(prompts, params)
    graphs = engine(**common)
    assert graphs.runner.graphs is not None
    got = graphs.generate(prompts, params)
    # Random weights leave many near ties (3 of 9 streams parted at one on an H100): the
    # ties are the check, and most streams must still agree whole.
    assert_agree_up_to_near_ties(got, want, margin=0.05, min_whole=0.5)


def test_the_worst_step_runs_inside_the_utilization() -> None:
    """1,024 sequences sampling with penalties, top-k/p, seeds and 20 logprobs each, beside
    prompts that fill the 8,192-token budget: the caching allocator's peak stays under
    --gpu-memory-utilization, which the profile sized the cache for."""
    utilization = 0.4
    e = engine(model="qwen3-0.6b", gpu_memory_utilization=utilization, max_model_len=2048,
               max_num_seqs=1024, max_num_batched_tokens=8192)  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    params = [
        SamplingParams(temperature=0.9, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.1,
                       presence_penalty=0.3, frequency_penalty=0.2, seed=i, logprobs=20,
                       max_tokens=4, min_tokens=2, ignore_eos=True)
        for i in range(1024)
    ]  # fmt: skip
    prompts = [[(i * 13 + j) % 5000 + 10 for j in range(16 + (i % 8) * 8)] for i in range(1024)]
    outputs = e.generate(prompts, params)
    assert all(len(o.output_token_ids) == 4 for o in outputs)
    limit = torch.cuda.get_device_properties(0).total_memory * utilization
    assert torch.cuda.max_memory_reserved() <= limit
    e.runner.allocate_kv_cache(1)


def test_fp8_kv_on_the_bundled_model_stays_close_to_bf16(
    smollm2_dir: Path, real_prompts: list[list[int]]
) -> None:
    common = {"model": str(smollm2_dir), "load_format": "auto", "max_num_seqs": 64,
              "kv_cache_memory_gb": 1.0}  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=5)
    bf16 = engine(**common).generate(real_prompts, params)
    fp8 = engine(**common, kv_cache_dtype="fp8").generate(real_prompts, params)
    agree = sum(a.output_token_ids == b.output_token_ids for a, b in zip(bf16, fp8, strict=True))
    assert agree >= len(real_prompts) * 8 // 9
