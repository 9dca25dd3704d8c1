"""The `triton` backend: the names `worker.models.attention` and `worker.models.elementwise`
import."""

from llm_worker.kernels.paged_attention import paged_attention
from llm_worker.kernels.rms_norm import rms_norm
from llm_worker.kernels.rotary import rotary_embedding
from llm_worker.kernels.silu_mul import silu_and_mul
from llm_worker.kernels.store_kv import store_kv

__all__ = ["paged_attention", "rms_norm", "rotary_embedding", "silu_and_mul", "store_kv"]
