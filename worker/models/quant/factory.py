"""Builds each linear layer of a model in the form its quantization config gives it."""

from dataclasses import dataclass

import torch

from llm_worker.models.elementwise import ElementwiseOps
from llm_worker.models.quant.block_fp8 import BlockFp8Linear
from llm_worker.models.quant.config import BlockFp8Scheme, Fp8Scheme, QuantConfig
from llm_worker.models.quant.fp8 import Fp8Linear
from llm_worker.models.quant.gemms import QuantGemms
from llm_worker.models.quant.int4 import Int4Linear
from llm_worker.models.quant.linear import DenseLinear, ShardedLinear
from llm_worker.models.quant.spec import LinearSpec


@dataclass(frozen=True)
class LinearFactory:
    quant: QuantConfig | None
    ops: ElementwiseOps  # the backend's elementwise kernels (FP8 layers quantize with them)
    gemms: QuantGemms  # the backend's quantized GEMMs
    dtype: torch.dtype  # activations

    def __call__(
        self, names: tuple[str, ...], in_features: int, shard_sizes: tuple[int, ...], bias: bool
    ) -> ShardedLinear:
        """A layer fusing the checkpoint modules `names` (shard i: shard_sizes[i] outputs)."""
        spec = LinearSpec(names, in_features, shard_sizes, bias, self.dtype)
        scheme = self.quant.scheme_for(names) if self.quant is not None else None
        if scheme is None:
            return DenseLinear(spec, self.ops)
        if isinstance(scheme, Fp8Scheme):
            return Fp8Linear(spec, self.ops, self.gemms, scheme)
        if isinstance(scheme, BlockFp8Scheme):
            return BlockFp8Linear(spec, self.ops, self.gemms, scheme)
        return Int4Linear(spec, self.ops, self.gemms, scheme)
