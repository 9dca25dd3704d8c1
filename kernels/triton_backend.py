"""The `triton` attention backend: the names `worker.models.attention` imports."""

from kernels.paged_attention import paged_attention
from kernels.store_kv import store_kv

__all__ = ["paged_attention", "store_kv"]
