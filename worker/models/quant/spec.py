"""The shape of a linear layer and the checkpoint modules its shards come from."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearSpec:
    names: tuple[str, ...]  # each shard's checkpoint module: model.layers.0.self_attn.q_proj
    in_features: int
    shard_sizes: tuple[int, ...]  # output features of each shard, in output order
    bias: bool
    dtype: torch.dtype  # activations, biases and unquantized weights

    @property
    def out_features(self) -> int:
        return sum(self.shard_sizes)

    def shard_rows(self, shard: int) -> slice:
        """The output features of `shard` in the fused layer."""
        start = sum(self.shard_sizes[:shard])
        return slice(start, start + self.shard_sizes[shard])
