"""store_kv against the torch reference (CPU interpreter at small sizes, or CUDA)."""

import pytest
import torch

from llm_worker.kernels import reference
from llm_worker.kernels.store_kv import store_kv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _caches(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype):
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return torch.randn(shape, device=DEVICE).to(dtype), torch.randn(shape, device=DEVICE).to(dtype)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_kv_heads", [1, 3])
def test_matches_reference_with_padding_slots(block_size: int, num_kv_heads: int) -> None:
    num_tokens, head_dim, num_blocks = 11, 32, 5
    # key/value as strided views of a fused qkv projection, as the model produces them.
    qkv = torch.randn(num_tokens, 2 + 2 * num_kv_heads, head_dim, device=DEVICE)
    key, value = qkv[:, 2 : 2 + num_kv_heads], qkv[:, 2 + num_kv_heads :]
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:num_tokens]
    slots[[1, 4, 7]] = -1
    k_cache, v_cache = _caches(num_blocks, block_size, num_kv_heads, head_dim, torch.float32)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.store_kv(key, value, k_ref, v_ref, slots)
    store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_ref)
    assert torch.equal(v_cache, v_ref)


def test_all_padding_writes_nothing() -> None:
    k_cache, v_cache = _caches(2, 16, 2, 64, torch.float32)
    before = (k_cache.clone(), v_cache.clone())
    rows = torch.randn(4, 2, 64, device=DEVICE)
    store_kv(rows, rows, k_cache, v_cache, torch.full((4,), -1, device=DEVICE))
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])


def test_casts_rows_to_cache_dtype() -> None:
    k_cache, v_cache = _caches(3, 16, 2, 64, torch.float16)
    key, value = torch.randn(2, 2, 2, 64, device=DEVICE).unbind(0)
    slots = torch.tensor([5, 40], device=DEVICE)
    store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache.view(-1, 2, 64)[slots], key.half())
    assert torch.equal(v_cache.view(-1, 2, 64)[slots], value.half())


def test_rejects_bad_inputs() -> None:
    k_cache, v_cache = _caches(2, 16, 2, 64, torch.float32)
    rows = torch.randn(3, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="int64"):
        store_kv(rows, rows, k_cache, v_cache, torch.zeros(3, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="key must be"):
        store_kv(rows[:, :1], rows, k_cache, v_cache, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="contiguous"):
        store_kv(rows, rows, k_cache.transpose(1, 2), v_cache.transpose(1, 2), rows[:, 0, 0].long())


@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.05, 3.0)])
def test_fp8_cache_quantizes_like_the_reference(scales: tuple[float, float]) -> None:
    """Rows divided by the layer's scale, rounded to nearest e4m3, and saturated at +-448
    (a bare cast would store NaN there): bit for bit the reference's bytes, whatever the
    source dtype."""
    k_scale, v_scale = scales
    num_tokens, num_kv_heads, head_dim = 9, 2, 32
    for dtype in (torch.float32, torch.bfloat16):
        key = (torch.randn(num_tokens, num_kv_heads, head_dim, device=DEVICE) * 4).to(dtype)
        value = (torch.randn(num_tokens, num_kv_heads, head_dim, device=DEVICE) / 8).to(dtype)
        key[0, 0, :4] = torch.tensor([1e4, -1e4, 448.0 * k_scale * 1.5, 1e-6])
        slots = torch.randperm(4 * 16, device=DEVICE)[:num_tokens]
        slots[3] = -1
        shape = (4, 16, num_kv_heads, head_dim)
        k_cache = torch.zeros(shape, dtype=torch.float8_e4m3fn, device=DEVICE)
        v_cache = torch.zeros_like(k_cache)
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        reference.store_kv(key, value, k_ref, v_ref, slots, k_scale=k_scale, v_scale=v_scale)
        store_kv(key, value, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)
        assert torch.equal(k_cache.view(torch.uint8), k_ref.view(torch.uint8))
        assert torch.equal(v_cache.view(torch.uint8), v_ref.view(torch.uint8))
        stored = k_cache.view(-1, num_kv_heads, head_dim)[slots[0]].float()
        assert stored[0, :3].tolist() == [448.0, -448.0, 448.0]  # saturated, not NaN
        roundtrip = reference.dequantize_kv(v_cache.view(-1, num_kv_heads, head_dim)[slots[1]],
                                            torch.float32, v_scale)  # fmt: skip
        # e4m3 keeps 3 mantissa bits: within 2^-4 relative, above the subnormal range.
        normal = value[1].float().abs() > 2**-6 * v_scale
        torch.testing.assert_close(roundtrip[normal], value[1].float()[normal], rtol=2**-4,
                                   atol=0)  # fmt: skip


def test_scales_are_refused_for_a_16_bit_cache() -> None:
    k_cache, v_cache = _caches(2, 16, 2, 64, torch.float16)
    rows = torch.randn(1, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="1 unless the cache is FP8"):
        store_kv(rows, rows, k_cache, v_cache, torch.zeros(1, dtype=torch.int64, device=DEVICE),
                 k_scale=0.5)  # fmt: skip


def test_fp8_rounding_at_every_tie_and_subnormal() -> None:
    """Every e4m3 value, every midpoint between two neighbours (ties go to the even one), and
    the fp32 numbers right beside each midpoint: the kernel's bytes are the reference cast's."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite() & (grid >= 0)].unique()  # sorted, +0 to 448
    mids = (grid[1:] + grid[:-1]) / 2
    beside = torch.cat([mids.nextafter(mids + 1), mids.nextafter(mids - 1)])
    values = torch.cat([grid, mids, beside])
    values = torch.cat([values, -values])
    rows = torch.cat([values, torch.zeros(-len(values) % 64)]).view(-1, 1, 64).to(DEVICE)
    num_tokens = rows.shape[0]
    cache = torch.zeros((num_tokens, 1, 1, 64), dtype=torch.float8_e4m3fn, device=DEVICE)
    slots = torch.arange(num_tokens, device=DEVICE)
    store_kv(rows, rows, cache, cache.clone(), slots)
    expected = rows.to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(cache.view(num_tokens, 1, 64).view(torch.uint8), expected)
