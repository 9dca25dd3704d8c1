"""The quantization a model runs, as types: the schemes, which modules they cover, the error
that refuses one. checkpoint_config.py reads them from config.json and --quantization.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

METHODS = ("fp8", "awq", "gptq", "compressed-tensors")
BLOCK_FP8 = (128, 128)  # the one weight block the block-FP8 kernel takes (rows of N, cols of K)
INT4_GROUP_MULTIPLE = 32  # the W4A16 kernel's K tiles (32..128) must not cross a group
DUMMY_INT4_GROUP = 128


class UnsupportedQuantization(ValueError):
    """A quantization format or option this worker cannot run; the message names it."""


@dataclass(frozen=True)
class Fp8Scheme:
    """e4m3 weights with one scale per output channel (a checkpoint's per-tensor scale is
    repeated over its shard's channels), activations quantized to e4m3 per token, or with the
    checkpoint's static per-tensor scale."""

    serialized: bool  # the checkpoint holds FP8 weights; False: its bf16 weights are quantized
    static_input: bool  # an `input_scale` per layer in the checkpoint


@dataclass(frozen=True)
class BlockFp8Scheme:
    """e4m3 weights with one scale per (block[0] x block[1]) block; activations quantized per
    token and block[1]-wide group inside the GEMM."""

    block: tuple[int, int]
    scale_name: str  # `weight_scale_inv` (quant_method fp8) or `weight_scale` (compressed-tensors)


@dataclass(frozen=True)
class Int4Scheme:
    """4-bit weights with a float16 scale and a 4-bit zero per group of input channels."""

    method: Literal["awq", "gptq"]
    group_size: int  # -1: one group spans all of K
    zero_offset: int = 0  # GPTQ's v1 checkpoints store zero - 1


QuantScheme = Fp8Scheme | BlockFp8Scheme | Int4Scheme


@dataclass(frozen=True)
class QuantConfig:
    method: str  # one of METHODS: what --quantization calls the checkpoint's format
    scheme: QuantScheme
    # Module names (checkpoint names: model.layers.0.mlp.down_proj) matched by re.match
    targets: tuple[str, ...] = (".*",)
    ignored: tuple[str, ...] = ()

    def scheme_for(self, module_names: Sequence[str]) -> QuantScheme | None:
        """The scheme of a layer that fuses the checkpoint modules `module_names`, or None
        where they stay in the activation dtype; shards of one layer must agree."""
        quantized = {self._quantizes(name) for name in module_names}
        if len(quantized) > 1:
            raise UnsupportedQuantization(
                f"{self.method}: {', '.join(module_names)} are fused into one layer here, but "
                "the checkpoint quantizes some of them and not the others"
            )
        return self.scheme if quantized.pop() else None

    def _quantizes(self, name: str) -> bool:
        targeted = any(re.match(pattern, name) for pattern in self.targets)
        return targeted and not any(re.match(pattern, name) for pattern in self.ignored)


def substring_patterns(names: Sequence[str] | None) -> tuple[str, ...]:
    """AutoAWQ's `modules_to_not_convert` and FP8's `ignored_layers`: a name matches a part."""
    return tuple(".*" + re.escape(name) for name in names or ())


def describe(quant: QuantConfig | None) -> str:
    """For the load log: `unquantized`, or the method and its scheme."""
    if quant is None:
        return "unquantized"
    scheme = quant.scheme
    if isinstance(scheme, Fp8Scheme):
        where = "checkpoint" if scheme.serialized else "quantized at load"
        activations = "static" if scheme.static_input else "dynamic per-token"
        return f"{quant.method} (fp8 e4m3 per channel, {where}; {activations} fp8 activations)"
    if isinstance(scheme, BlockFp8Scheme):
        return f"{quant.method} (fp8 e4m3, {scheme.block[0]}x{scheme.block[1]} blocks)"
    return f"{quant.method} (int4, group {scheme.group_size})"
