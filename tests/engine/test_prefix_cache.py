"""Prefix caching saves work without changing output (bundled SmolLM2)."""

import random
from pathlib import Path

import pytest

from tests.oracle import TINY_VOCAB, engine_for, greedy, make_tiny_checkpoint

PREFIX_LEN = 512


@pytest.mark.slow
def test_shared_512_token_prefix_computes_only_the_suffix(smollm2_dir: Path) -> None:
    rng = random.Random(3)
    prefix = [rng.randrange(100, 40000) for _ in range(PREFIX_LEN)]
    first = prefix + [rng.randrange(100, 40000) for _ in range(37)]
    second = prefix + [rng.randrange(100, 40000) for _ in range(29)]
    params = greedy(8, ignore_eos=True)

    engine = engine_for(smollm2_dir, enable_prefix_caching=True)
    engine.generate([first], params)
    computed_before = engine.stats().num_computed_tokens
    hits_before = engine.stats().prefix_cache.hits
    [cached_out] = engine.generate([second], params)
    stats = engine.stats()

    assert cached_out.num_cached_tokens == PREFIX_LEN
    assert stats.prefix_cache.hits - hits_before == PREFIX_LEN
    # Only the suffix is prefilled; each later output token costs one more computed token.
    suffix_len = len(second) - PREFIX_LEN
    assert stats.num_computed_tokens - computed_before == suffix_len + params.max_tokens - 1

    [uncached_out] = engine_for(smollm2_dir, enable_prefix_caching=False).generate([second], params)
    assert cached_out.output_token_ids == uncached_out.output_token_ids
    assert uncached_out.num_cached_tokens == 0


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_blocks_of_later_chunks_and_of_outputs_are_cached(
    tmp_path: Path, async_scheduling: bool
) -> None:
    """Every block that fills up is registered, not only those of a prompt's first chunk: a
    follow-up turn (prompt + answer + more) reuses the prompt's and the answer's blocks."""
    folder = make_tiny_checkpoint(tmp_path, "llama", 4, 2, 64)
    engine = engine_for(folder, enable_prefix_caching=True, max_num_batched_tokens=16,
                        async_scheduling=async_scheduling)  # fmt: skip
    rng = random.Random(5)
    prompt = [rng.randrange(3, TINY_VOCAB) for _ in range(70)]  # five chunks of 16 tokens
    [first] = engine.generate([prompt], greedy(30, ignore_eos=True))
    follow_up = prompt + first.output_token_ids + [rng.randrange(3, TINY_VOCAB) for _ in range(5)]
    [second] = engine.generate([follow_up], greedy(4, ignore_eos=True))
    # 70 + 30 tokens were computed but the last one (its KV is never needed): 99 // 16 blocks.
    assert second.num_cached_tokens == 6 * 16
    [fresh] = engine_for(folder, enable_prefix_caching=False).generate(
        [follow_up], greedy(4, ignore_eos=True)
    )
    assert second.output_token_ids == fresh.output_token_ids
