"""Launch configuration: bounded by the shared memory, and few distinct compiled variants."""

import dataclasses
import math

import pytest
import torch

from llm_worker.kernels import attention_config
from llm_worker.kernels.attention_config import (
    AttentionConfig,
    choose_config,
    shared_memory_bytes,
    split_walk,
)

HOPPER = (132, 232_448)  # multiprocessors, opt-in shared memory per program (227 KiB)
ADA = (128, 101_376)  # 99 KiB


def _choose(monkeypatch, limits, *, seqs=1, q=4096, k=4096, head_dim=128, group=4, tokens=None,
            fp8_cache=False):  # fmt: skip
    monkeypatch.setattr(attention_config, "device_limits", lambda device: limits)
    return choose_config(seqs, 8, group, head_dim, q, k, torch.bfloat16, torch.device("cuda"),
                         num_tokens=tokens, fp8_cache=fp8_cache)  # fmt: skip


@pytest.mark.parametrize(
    ("seqs", "q", "k", "tokens", "splits"),
    [
        (33, 96, 8192, 128, 4),  # budget 128 beside 32 decodes: 32 row tiles over 8k keys
        (33, 224, 8192, 256, 2),  # budget 256: 64 row tiles
        (40, 512, 8448, 512, 1),  # a 512-token graph bucket: 128 tiles nearly fill the GPU
        (1, 4096, 4096, 4096, 1),  # a prompt without cached context: one pass
        (1, 1500, 1500, 1500, 1),
        (1, 1024, 3000, 1024, 1),  # context under 4x the query
        (33, 96, 8192, None, 1),  # no token count: the decode-only rule
    ],
)
def test_prefill_tiles_split_only_for_a_few_tiles_over_a_long_context(
    monkeypatch, seqs: int, q: int, k: int, tokens: int | None, splits: int
) -> None:
    config = _choose(monkeypatch, HOPPER, seqs=seqs, q=q, k=k, tokens=tokens)
    assert (config.block_m, config.num_splits) == (128, splits)


@pytest.mark.parametrize(("limits", "num_stages"), [(HOPPER, 3), (ADA, 2)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_tiles_fit_shared_memory(
    monkeypatch, limits, num_stages: int, head_dim: int
) -> None:
    config = _choose(monkeypatch, limits, head_dim=head_dim, q=1500, k=1500)
    assert (config.block_m, config.num_warps, config.num_splits) == (128, 8, 1)
    need = shared_memory_bytes(config.block_m, config.block_n, head_dim, 2, config.num_stages)
    assert need <= limits[1]
    if head_dim == 128:
        assert config.num_stages == num_stages


@pytest.mark.parametrize("limits", [HOPPER, ADA])
def test_hints_map_to_few_compiled_variants_that_fit(monkeypatch, limits) -> None:
    """Every max_seqlen hint from 1 to 32k lands on a handful of kernels (constexpr choices), each
    within the shared memory; the split count is a run-time argument and compiles nothing."""
    variants = set()
    for q in [1, 2, 3, 5, 8, 13, 31, 64, 100, 511, 1000, 4097, 32768]:
        for k in [q, q + 7, 2 * q + 1000, 32768]:
            for seqs in [1, 3, 16, 64, 256]:
                c = _choose(monkeypatch, limits, seqs=seqs, q=q, k=k)
                assert shared_memory_bytes(c.block_m, c.block_n, 128, 2, c.num_stages) <= limits[1]
                one_tile_per_seq = q * 4 <= c.block_m
                split_k = c.num_splits > 1
                step_kv = c.step_kv and not one_tile_per_seq
                variants.add((c.block_m, c.block_n, c.num_stages, split_k, one_tile_per_seq,
                              step_kv))  # fmt: skip
    assert len(variants) <= 16, variants


@pytest.mark.parametrize(
    ("q", "k", "expect"),
    [
        (8192, 8192, (128, 128, 8, 3, True, None)),  # a long prompt: 128-key tiles
        (2048, 2100, (128, 128, 8, 3, True, None)),  # a prompt beside decodes
        (1500, 1500, (128, 64, 8, 3, True, None)),
        # short prompts: registers capped so that three programs fit a multiprocessor
        (1024, 1024, (64, 32, 4, 3, True, 168)),
        (512, 512, (64, 32, 4, 3, True, 168)),
        (480, 8192, (128, 64, 8, 3, False, None)),  # a chunk over a long cached prefix: the cache
    ],
)
def test_prefill_tiles_by_key_range_and_step_kv(monkeypatch, q: int, k: int, expect) -> None:
    c = _choose(monkeypatch, HOPPER, q=q, k=k, tokens=q)
    assert (c.block_m, c.block_n, c.num_warps, c.num_stages, c.step_kv, c.max_registers) == expect


@pytest.mark.parametrize(
    ("seqs", "q", "k", "expect"),
    [
        # prompts over a prefix-cache hit: every key gathered; short ranges that fill the GPU
        # take 32-key tiles capped at 128 registers, two programs a multiprocessor
        (16, 100, 600, (128, 32, 8, 3, 128)),
        (128, 64, 256, (128, 32, 8, 3, 128)),
        (8, 50, 250, (128, 64, 8, 3, None)),  # 128 tiles: fewer than the multiprocessors
        (16, 256, 2048, (128, 64, 8, 3, None)),  # a longer range
    ],
)
def test_prefix_hit_tiles(monkeypatch, seqs: int, q: int, k: int, expect) -> None:
    c = _choose(monkeypatch, HOPPER, seqs=seqs, q=q, k=k, tokens=seqs * q)
    assert not c.step_kv
    assert (c.block_m, c.block_n, c.num_warps, c.num_stages, c.max_registers) == expect


@pytest.mark.parametrize("regs", [0, 23, 256])
def test_register_cap_out_of_range_is_refused(regs: int) -> None:
    with pytest.raises(ValueError, match="max_registers"):
        AttentionConfig(64, 32, 1, 4, 3, max_registers=regs)


@pytest.mark.parametrize(
    ("seqs", "k", "expect"),
    [
        # From 4k keys: two programs a multiprocessor, 32-key tiles three stages deep
        (1, 16384, (16, 32, 32, 3)),
        (16, 16384, (16, 32, 3, 3)),
        (1, 4096, (16, 32, 32, 3)),
        (64, 16384, (16, 64, 1, 2)),  # no split: 64-key tiles
        (16, 1024, (16, 32, 5, 2)),  # shorter: four programs, 32-key tiles two stages deep
        (1, 1024, (16, 64, 8, 2)),  # splits of 128 keys: 64-key tiles
    ],
)
def test_decode_tiles_by_split(monkeypatch, seqs: int, k: int, expect) -> None:
    c = _choose(monkeypatch, HOPPER, seqs=seqs, q=1, k=k)
    assert (c.block_m, c.block_n, c.num_splits, c.num_stages) == expect


@pytest.mark.parametrize(
    ("seqs", "k", "expect"),
    [
        (32, 1024, (16, 128, 1, 2)),  # unsplit: 128-key tiles, a 64-key bf16 tile's bytes
        (256, 4096, (16, 128, 1, 2)),
        (16, 16384, (16, 32, 3, 3)),  # split decode keeps the bf16 cache's rules
        (1, 1024, (16, 64, 8, 2)),
    ],
)
def test_fp8_cache_decode_tiles(monkeypatch, seqs: int, k: int, expect) -> None:
    c = _choose(monkeypatch, HOPPER, seqs=seqs, q=1, k=k, fp8_cache=True)
    assert (c.block_m, c.block_n, c.num_splits, c.num_stages) == expect
    prefill = _choose(monkeypatch, HOPPER, seqs=seqs, q=512, k=k, fp8_cache=True)
    assert prefill == _choose(monkeypatch, HOPPER, seqs=seqs, q=512, k=k)


@pytest.mark.parametrize(
    ("seqs", "k", "one_pass", "preload"),
    [
        (1, 4096, True, False),  # 32 splits of 128 keys
        (1, 12288, True, False),  # 32 splits of 384
        (1, 16384, True, False),  # 32 splits of 512
        (3, 6144, True, True),  # 11 splits of 576
        (1, 32768, True, True),  # 32 splits of 1,024
        (3, 8192, True, True),  # 11 splits of 768
        (2, 32768, True, True),  # 17 splits of 1,952
        (3, 32768, False, False),  # 11 splits of 3,008: two loops
        (16, 1024, True, True),  # 5 splits of 7 tiles of 32 keys, two stages deep
        (16, 2048, True, False),  # 5 splits of 13 tiles, two stages deep
        (16, 512, False, False),  # 4 splits of two 64-key tiles
        (64, 4096, False, False),  # no split
    ],
)
def test_split_decode_takes_one_pass_and_preloads_long_splits(
    monkeypatch, seqs: int, k: int, one_pass: bool, preload: bool
) -> None:
    c = _choose(monkeypatch, HOPPER, seqs=seqs, q=1, k=k)
    assert (c.one_pass, c.ids_chunk_keys > 0) == (one_pass, preload)
    split_tiles = math.ceil(math.ceil(k / c.block_n) / c.num_splits)
    if c.one_pass:
        assert split_tiles >= 3 and split_tiles * c.block_n <= 2048
    if preload:
        # The whole split's ids in one chunk.
        assert c.ids_chunk_keys == split_tiles * c.block_n
    # Prefill and chunk tiles keep their unmasked loop whatever their split.
    assert not _choose(monkeypatch, HOPPER, seqs=33, q=96, k=8192, tokens=128).one_pass


def test_split_walk_follows_a_replaced_tile(monkeypatch) -> None:
    """A sweep that swaps the rule's key tile asks split_walk again: the rule's ids chunk (one
    split of 32-key tiles) is not whole 64-key tiles."""
    auto = _choose(monkeypatch, HOPPER, seqs=2, q=1, k=12288)  # 17 splits of 23 tiles of 32
    assert (auto.one_pass, auto.ids_chunk_keys) == (True, 736)
    with pytest.raises(ValueError, match="ids_chunk_keys"):
        dataclasses.replace(auto, block_n=64)
    one_pass, ids_chunk_keys = split_walk(64, auto.num_splits, 3, 12288, decode_tile=True)
    assert (one_pass, ids_chunk_keys) == (True, 768)  # 12 tiles of 64
    dataclasses.replace(auto, block_n=64, one_pass=one_pass, ids_chunk_keys=ids_chunk_keys)


def test_ids_chunk_keys_needs_one_pass_and_whole_key_tiles() -> None:
    AttentionConfig(16, 32, 4, 4, 3, one_pass=True, ids_chunk_keys=96)
    with pytest.raises(ValueError, match="ids_chunk_keys"):
        AttentionConfig(16, 32, 4, 4, 3, ids_chunk_keys=96)
    with pytest.raises(ValueError, match="ids_chunk_keys"):
        AttentionConfig(16, 32, 4, 4, 3, one_pass=True, ids_chunk_keys=100)


def test_no_split_is_left_without_keys(monkeypatch) -> None:
    """Each split gets cdiv(key tiles, splits) tiles: the count is trimmed to the splits that
    have some (batch 2 x 4k would ask for 17 splits of 8 of its 128 tiles)."""
    for seqs in [1, 2, 3, 4, 6, 16, 40]:
        for k in [300, 1000, 4096, 5000, 16384, 32768]:
            c = _choose(monkeypatch, HOPPER, seqs=seqs, q=1, k=k)
            tiles = -(-k // c.block_n)
            assert (c.num_splits - 1) * -(-tiles // c.num_splits) < tiles
    assert _choose(monkeypatch, HOPPER, seqs=2, q=1, k=4096).num_splits == 16


def test_a_given_prefill_tile_replaces_the_rules_and_sets_the_split(monkeypatch) -> None:
    """A chunk of 96 tokens beside 32 decodes over 8k keys: 128-row tiles split 4 ways (the
    token tiles fill 32 of 132 multiprocessors); 64-row tiles are twice as many, so 2 ways."""
    monkeypatch.setattr(attention_config, "device_limits", lambda device: HOPPER)
    args = (33, 8, 4, 128, 96, 8192, torch.bfloat16, torch.device("cuda"))
    rules = choose_config(*args, num_tokens=128)
    given = choose_config(*args, num_tokens=128, prefill_tile=(64, 4, 32, 3, 168))
    assert (rules.block_m, rules.num_splits, rules.max_registers) == (128, 4, None)
    assert (given.block_m, given.num_warps, given.block_n, given.num_stages) == (64, 4, 32, 3)
    assert (given.num_splits, given.max_registers) == (2, 168)
