"""The paged KV cache's tensors: one K and one V per layer, blocks of `block_size` tokens."""

import torch

from llm_worker.models.llama import CausalLM, KVCache


def kv_block_bytes(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
    cfg = model.config
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    return per_token * block_size * torch.tensor([], dtype=dtype).element_size()


def make_kv_caches(
    model: CausalLM, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[KVCache]:
    """One K and one V tensor per layer: [num_blocks, block_size, num_kv_heads, head_dim]."""
    cfg = model.config
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    return [
        (
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
        )
        for _ in range(cfg.num_layers)
    ]
