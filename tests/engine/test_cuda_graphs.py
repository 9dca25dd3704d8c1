"""Decode CUDA graphs give the eager tokens; start-up memory errors name the knobs to turn."""

import pytest
import torch

from llm_worker.config import EngineSettings
from llm_worker.engine.builder import EngineConfigError
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.engine.model_runner import ModelRunner
from llm_worker.schemas import SamplingParams
from tests.engine.spec_methods import each_spec_method


def engine(**overrides: object) -> LLMEngine:
    settings = EngineSettings(load_format="dummy", **overrides)  # type: ignore[arg-type]
    return LLMEngine.from_settings(settings)


def prompts() -> list[list[int]]:
    # 11 prompts: decode batches of 11 and fewer pad up to the 16, 8, 4, 2 and 1 graphs.
    return [[(7 * i + 3 * j) % 400 + 10 for j in range(5 + 9 * i)] for i in range(11)]


@pytest.mark.gpu
@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_graph_decode_gives_the_eager_greedy_tokens(async_scheduling: bool) -> None:
    common = dict(model="tiny-llama", device="cuda", dtype="float32", max_num_seqs=16,
                  max_model_len=256, kv_cache_memory_gb=0.05)  # fmt: skip
    graphs = engine(**common, async_scheduling=async_scheduling)
    eager = engine(**common, enforce_eager=True, async_scheduling=False)
    assert graphs.runner.graphs is not None and eager.runner.graphs is None
    assert graphs.async_scheduling is async_scheduling
    # Different max_tokens make the batch shrink step by step through the buckets.
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=4 + 3 * i)
              for i in range(11)]  # fmt: skip
    want = [o.output_token_ids for o in eager.generate(prompts(), params)]
    got = [o.output_token_ids for o in graphs.generate(prompts(), params)]
    assert got == want


@pytest.mark.gpu
@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_graph_decode_keeps_sampling_and_prefix_cache_working(async_scheduling: bool) -> None:
    e = engine(model="tiny-llama", device="cuda", dtype="float32", max_num_seqs=8,
               max_model_len=128, kv_cache_memory_gb=0.05,
               async_scheduling=async_scheduling)  # fmt: skip
    shared = list(range(100, 140))
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=5, ignore_eos=True, max_tokens=12)
    first = e.generate([[*shared, 1, 2]], params)[0].output_token_ids
    again = e.generate([[*shared, 1, 2]], params)[0]
    assert again.output_token_ids == first  # seeded: same draws, whatever else runs
    assert again.num_cached_tokens >= 32


@pytest.mark.gpu
def test_cache_too_small_for_one_sequence_names_the_knobs() -> None:
    with pytest.raises(EngineConfigError, match="--max-model-len") as info:
        engine(model="qwen3-0.6b", device="cuda", gpu_memory_utilization=0.01)
    assert "--gpu-memory-utilization" in str(info.value)


def test_cuda_out_of_memory_at_start_up_becomes_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ModelRunner.allocate_kv_cache

    def allocate(self: ModelRunner, num_blocks: int) -> None:
        if num_blocks > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
        real(self, num_blocks)

    monkeypatch.setattr(ModelRunner, "allocate_kv_cache", allocate)
    with pytest.raises(EngineConfigError, match="out of GPU memory") as info:
        engine(model="tiny-llama", device="cpu", dtype="float32")
    for knob in ("--max-model-len", "--gpu-memory-utilization", "--enforce-eager"):
        assert knob in str(info.value)


@pytest.mark.gpu
@each_spec_method
def test_verification_and_draft_graphs_give_the_eager_tokens(spec: dict[str, object]) -> None:
    common = dict(model="tiny-llama", device="cuda", dtype="float32", max_num_seqs=16,
                  max_model_len=256, kv_cache_memory_gb=0.05, speculative_adaptive=False,
                  **spec)  # fmt: skip
    graphs = engine(**common)
    eager = engine(**common, enforce_eager=True)
    assert graphs.runner.graphs is not None and eager.runner.graphs is None
    assert graphs.runner.graphs.verify is not None
    assert graphs.runner.graphs.verify.tokens_per_seq == 5
    draft = graphs.speculator.draft if graphs.speculator is not None else None
    is_draft = spec["speculative_method"] == "draft"
    assert (draft is not None and draft.graphs is not None) == is_draft
    # Repetitive prompts give n-gram matches, so verification steps carry drafts.
    reps = [[(5 * i + j % 7) % 400 + 10 for j in range(12 + 9 * i)] for i in range(11)]
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=8 + 3 * i)
              for i in range(11)]  # fmt: skip
    want = [o.output_token_ids for o in eager.generate(reps, params)]
    got = [o.output_token_ids for o in graphs.generate(reps, params)]
    assert got == want
    stats = graphs.stats().spec
    assert stats is not None and stats.num_draft_tokens > 0


@pytest.mark.gpu
def test_prefill_graphs_give_the_eager_tokens_with_chunks_and_prefix_hits() -> None:
    common = dict(model="tiny-llama", device="cuda", dtype="float32", max_num_seqs=16,
                  max_model_len=512, kv_cache_memory_gb=0.05,
                  max_num_batched_tokens=200)  # fmt: skip
    graphs = engine(**common)
    eager = engine(**common, enforce_eager=True)
    assert graphs.runner.graphs is not None and eager.runner.graphs is None
    assert graphs.runner.graphs.prefill is not None
    assert graphs.runner.graphs.prefill.shapes == [(16, 128), (16, 200)]
    shared = [(3 * j) % 400 + 10 for j in range(48)]  # three full blocks, hit by later prompts
    prompts = [shared + [(7 * i + j) % 400 + 10 for j in range(20 * i + 1)] for i in range(12)]
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=6 + 2 * i)
              for i in range(12)]  # fmt: skip
    want = [o.output_token_ids for o in eager.generate(prompts, params)]
    got = [o.output_token_ids for o in graphs.generate(prompts, params)]
    assert got == want
    assert graphs.stats().prefix_cache.hits > 0


@pytest.mark.gpu
def test_programmatic_dependent_launch_gives_the_plain_launch_tokens() -> None:
    """Launching the triton kernels as programmatic dependents changes when they start, never
    what they compute: bf16 graphs for decode and prefill, chunks and prefix hits, token for
    token the same as plain launches."""
    from llm_worker.kernels.pdl import pdl_device

    if not pdl_device(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs Hopper or later")
    common = dict(model="tiny-llama", device="cuda", dtype="bfloat16", max_num_seqs=16,
                  max_model_len=512, kv_cache_memory_gb=0.05,
                  max_num_batched_tokens=200)  # fmt: skip
    shared = [(5 * j) % 400 + 10 for j in range(48)]
    prompts = [shared + [(11 * i + j) % 400 + 10 for j in range(25 * i + 1)] for i in range(12)]
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=8 + 3 * i)
              for i in range(12)]  # fmt: skip
    plain = [o.output_token_ids for o in engine(**common, pdl=False).generate(prompts, params)]
    dependent = engine(**common, pdl=True)
    assert [o.output_token_ids for o in dependent.generate(prompts, params)] == plain
    assert dependent.stats().prefix_cache.hits > 0
