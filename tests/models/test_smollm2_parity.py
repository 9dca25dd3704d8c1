"""The bundled SmolLM2-135M: greedy tokens equal HF generate() on real prompts of mixed lengths."""

from pathlib import Path

import pytest

from llm_worker.schemas import SamplingParams
from tests.oracle import engine_for, greedy, hf_greedy

MAX_NEW = 24
NUM_PROMPTS = 20
SETTINGS = {
    "chunked": {"max_num_batched_tokens": 32, "enable_prefix_caching": False},
    "preemption": {
        "num_gpu_blocks_override": 16, "max_model_len": 256, "max_num_batched_tokens": 1024,
    },
    "prefix": {"enable_prefix_caching": True, "max_num_seqs": 4},
    # Speculation always on, with chunked prefill, preemption and prefix caching at once.
    "spec-ngram": {
        "speculative_method": "ngram", "speculative_adaptive": False, "max_num_batched_tokens": 64,
        "num_gpu_blocks_override": 16, "max_model_len": 256, "enable_prefix_caching": True,
        "max_num_seqs": 8,
    },
    "spec-draft": {
        "speculative_method": "draft", "speculative_draft_layers": 8,
        "speculative_adaptive": False, "max_num_batched_tokens": 64,
        "num_gpu_blocks_override": 16, "max_model_len": 256, "enable_prefix_caching": True,
        "max_num_seqs": 8,
    },
}


@pytest.fixture(scope="module")
def prompts(real_prompts: list[list[int]]) -> list[list[int]]:
    # Interleave chat (with the shared system prompt) and plain completions.
    chats, plain = real_prompts[:20], real_prompts[20:]
    mixed = [p for pair in zip(chats, plain, strict=False) for p in pair]
    return mixed[:NUM_PROMPTS]


@pytest.fixture(scope="module")
def expected(smollm2_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    return hf_greedy(smollm2_dir, prompts, MAX_NEW, ignore_eos=False)


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_matches_hf(
    smollm2_dir: Path, prompts: list[list[int]], expected: list[list[int]], setting: str
) -> None:
    assert len({len(p) for p in prompts}) > 10  # mixed lengths
    engine = engine_for(smollm2_dir, **SETTINGS[setting])
    outputs = engine.generate(prompts, greedy(MAX_NEW, ignore_eos=False))
    assert [o.output_token_ids for o in outputs] == expected
    stats = engine.stats()
    if setting == "preemption":
        assert stats.num_preemptions > 0
    if setting == "prefix":
        assert stats.prefix_cache.hits > 0
    if setting.startswith("spec"):
        assert stats.spec is not None and stats.spec.num_accepted_tokens > 0
        assert stats.num_preemptions > 0 and stats.prefix_cache.hits > 0
        assert stats.num_steps > 1 + max(len(p) for p in prompts) // 64  # chunked prompts


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(smollm2_dir: Path, prompts: list[list[int]]) -> None:
    params = [
        SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=100 + i, max_tokens=16)
        for i in range(6)
    ]
    first = engine_for(smollm2_dir).generate(prompts[:6], params)
    # A different batch composition and engine seed: seeded requests must not notice.
    second = engine_for(smollm2_dir, seed=99, max_num_seqs=2).generate(prompts[:6], params)
    assert [o.output_token_ids for o in first] == [o.output_token_ids for o in second]
    unseeded = engine_for(smollm2_dir).generate(
        prompts[:6], SamplingParams(temperature=0.9, max_tokens=16)
    )
    assert [o.output_token_ids for o in unseeded] != [o.output_token_ids for o in first]
