"""Attention backends: the same paged layout served by torch (CPU, oracle) or Triton (CUDA)."""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from llm_worker.kernels import reference
from llm_worker.models import torch_attention
from llm_worker.models.elementwise import TORCH_OPS, ElementwiseOps, triton_ops


@dataclass(frozen=True)
class AttentionMetadata:
    """Per-step batch description shared by every layer. Tensors live on the model's device."""

    slot_mapping: torch.Tensor  # [num_tokens] int64; -1 = padding token, nothing written
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor  # [num_seqs] int32; context length including this step's tokens
    cu_seqlens_q: torch.Tensor  # [num_seqs + 1] int32; offsets of each sequence's new tokens
    max_seqlen_q: int
    max_seqlen_k: int

    @classmethod
    def whole_prefill(
        cls, num_tokens: int, block_size: int, device: torch.device | str = "cpu"
    ) -> "AttentionMetadata":
        """One sequence's prompt in one step, outside the engine (benches, oracles): token i
        goes to slot i of a cache of its own, whose blocks 0, 1, ... are the sequence's in
        order; that cache needs ceil(num_tokens / block_size) blocks."""
        num_blocks = -(-num_tokens // block_size)
        return cls(
            slot_mapping=torch.arange(num_tokens, device=device),
            block_tables=torch.arange(num_blocks, dtype=torch.int32, device=device)[None],
            seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=device),
            cu_seqlens_q=torch.tensor([0, num_tokens], dtype=torch.int32, device=device),
            max_seqlen_q=num_tokens,
            max_seqlen_k=num_tokens,
        )


@dataclass(frozen=True)
class KVScale:
    """One layer's scales for an FP8 KV cache: the cache holds key / k and value / v. Both are 1
    for any other cache, and for an FP8 one whose checkpoint brings none."""

    k: float = 1.0
    v: float = 1.0


UNIT_KV_SCALE = KVScale()


class StoreKV(Protocol):
    def __call__(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        *,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> None: ...


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    store_kv: StoreKV
    paged_attention: Callable[..., torch.Tensor]
    # CUDA graphs need launches that never read tensors back to the host; the torch backend does
    # (it splits decode from multi-token rows on the host), so it always runs eagerly.
    graph_capturable: bool = False
    # The layer's norms, rotary and SiLU*mul run with the same kernels as attention: the torch
    # backend keeps the CPU path as it is, the triton one fuses each into one launch.
    ops: ElementwiseOps = TORCH_OPS

    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        kv_scale: KVScale = UNIT_KV_SCALE,  # this layer's, for an FP8 cache
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        scales = {"k_scale": kv_scale.k, "v_scale": kv_scale.v}
        self.store_kv(key, value, k_cache, v_cache, meta.slot_mapping, **scales)
        return self.paged_attention(
            query,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.seq_lens,
            meta.cu_seqlens_q,
            scale,
            meta.max_seqlen_q,
            meta.max_seqlen_k,
            key,
            value,
            **scales,
        )


TORCH_BACKEND = AttentionBackend(
    name="torch", store_kv=reference.store_kv, paged_attention=torch_attention.paged_attention
)


def get_backend(
    name: str, device: torch.device, fused_ops: bool = True, pdl: bool = True
) -> AttentionBackend:
    """`auto` picks triton on CUDA and torch elsewhere; `fused_ops` False keeps the triton
    backend's norms, rotary and SiLU*mul in plain torch (to measure what fusing buys). `pdl`:
    the triton backend's kernels launch as programmatic dependents on Hopper and later
    (`kernels.pdl`): each may start while the kernel before it ends.

    That is safe here because of what runs right before each: attention follows `store_kv`,
    which writes cache rows only (the block tables, lengths and slot mapping are copied from the
    host before the step), and each elementwise kernel follows a matmul, the embedding or another
    of them."""
    if name == "auto":
        name = "triton" if device.type == "cuda" else "torch"
    if name == "torch":
        return TORCH_BACKEND
    if name == "triton":
        from llm_worker.kernels import triton_backend

        return AttentionBackend(
            name="triton",
            store_kv=functools.partial(triton_backend.store_kv, pdl=pdl),
            paged_attention=functools.partial(triton_backend.paged_attention, pdl=pdl),
            graph_capturable=True,
            ops=triton_ops(pdl) if fused_ops else TORCH_OPS,
        )
    raise ValueError(f"unknown attention backend {name!r}; choose auto, torch or triton")
