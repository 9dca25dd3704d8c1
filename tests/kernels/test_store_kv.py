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
