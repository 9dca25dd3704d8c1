"""Greedy tokens equal HF generate() for random tiny Llama / Qwen2 / Qwen3 checkpoints."""

import random
from pathlib import Path

import pytest

from tests.oracle import (
    TINY_CONFIGS,
    TINY_VOCAB,
    engine_for,
    greedy,
    hf_greedy,
    make_tiny_checkpoint,
)

MAX_NEW = 12
SETTINGS = {
    # A budget under most prompt lengths: every long prompt is prefilled in several chunks.
    "chunked": {"max_num_batched_tokens": 16, "enable_prefix_caching": False},
    # Room for about three sequences: running ones must give their blocks back and recompute.
    "preemption": {"num_gpu_blocks_override": 12, "block_size": 16, "max_model_len": 192,
                   "max_num_batched_tokens": 512},
    # Two at a time, so later prompts arrive after the shared prefix has been computed.
    "prefix": {"enable_prefix_caching": True, "block_size": 16, "max_num_seqs": 2},
}


def _prompts(setting: str) -> list[list[int]]:
    rng = random.Random(7)
    if setting == "prefix":
        shared = [rng.randrange(3, TINY_VOCAB) for _ in range(40)]
        return [
            shared + [rng.randrange(3, TINY_VOCAB) for _ in range(rng.randint(1, 20))]
            for _ in range(8)
        ]
    return [[rng.randrange(3, TINY_VOCAB) for _ in range(rng.randint(3, 70))] for _ in range(8)]


@pytest.fixture(scope="module", params=TINY_CONFIGS, ids=[c[0] for c in TINY_CONFIGS])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    name, model_type, heads, kv_heads, head_dim = request.param
    return make_tiny_checkpoint(
        tmp_path_factory.mktemp(name), model_type, heads, kv_heads, head_dim
    )


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_matches_hf(checkpoint: Path, setting: str, async_scheduling: bool) -> None:
    prompts = _prompts(setting)
    expected = hf_greedy(checkpoint, prompts, MAX_NEW, ignore_eos=True)
    engine = engine_for(checkpoint, async_scheduling=async_scheduling, **SETTINGS[setting])
    outputs = engine.generate(prompts, greedy(MAX_NEW, ignore_eos=True))
    assert [o.output_token_ids for o in outputs] == expected
    stats = engine.stats()
    if setting == "preemption":
        assert stats.num_preemptions > 0
    if setting == "prefix":
        assert stats.prefix_cache.hits >= 6 * 32  # all but the first two reuse two full blocks
    if setting == "chunked":
        assert stats.num_steps > MAX_NEW + max(len(p) for p in prompts) // 16
