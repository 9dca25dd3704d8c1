"""Prefix caching saves work without changing output (bundled SmolLM2)."""

import random
from pathlib import Path

import pytest

from tests.oracle import engine_for, greedy

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
