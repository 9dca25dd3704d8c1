"""Which quantization a model runs: config.json's `quantization_config`, checked against
`--quantization` (named as vLLM names them), or FP8 from a bf16 checkpoint at load.

Anything this worker cannot run exactly as the checkpoint means it is refused here, at start-up,
with a message naming it (3-bit GPTQ, act-order, fp8 e5m2, AWQ's GEMV packing, ...): a format
read wrongly would serve plausible garbage.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


def resolve_quantization(
    hf_config: dict[str, Any], requested: str | None, dummy: bool
) -> QuantConfig | None:
    """The quantization the model runs with. `requested` is --quantization: None follows the
    checkpoint; on a checkpoint without a quantization_config only fp8 (quantize at load)
    works, or awq / gptq with dummy weights (random 4-bit weights of that layout)."""
    if requested is not None and requested not in METHODS:
        raise UnsupportedQuantization(
            f"--quantization {requested!r} is not supported; choose one of {', '.join(METHODS)}"
        )
    raw = hf_config.get("quantization_config")
    config = None if raw is None else parse_quantization_config(raw)
    if config is None:  # weights as stored: bf16 (a KV-cache-only config included)
        if requested is None:
            return None
        if requested == "fp8":
            return QuantConfig("fp8", Fp8Scheme(serialized=False, static_input=False))
        if dummy and requested in ("awq", "gptq"):
            method: Literal["awq", "gptq"] = "awq" if requested == "awq" else "gptq"
            return QuantConfig(method, Int4Scheme(method, DUMMY_INT4_GROUP))
        raise UnsupportedQuantization(
            f"--quantization {requested} needs a checkpoint quantized with it (a "
            "quantization_config in config.json), and this one has none; only fp8 quantizes "
            "bf16 weights at load"
        )
    fp8_alias = requested == "fp8" and isinstance(config.scheme, Fp8Scheme | BlockFp8Scheme)
    if requested is not None and requested != config.method and not fp8_alias:
        raise UnsupportedQuantization(
            f"--quantization {requested} does not match the checkpoint, which is quantized with "
            f"{config.method} (config.json's quantization_config)"
        )
    return config


def parse_quantization_config(raw: Any) -> QuantConfig | None:
    """The weights' quantization, or None when the config quantizes only the KV cache."""
    from llm_worker.models.quant.compressed_tensors import parse_compressed_tensors

    if not isinstance(raw, dict):
        raise UnsupportedQuantization(f"quantization_config must be an object, got {raw!r}")
    method = str(raw.get("quant_method", "")).lower()
    parsers = {
        "fp8": _parse_fp8,
        "awq": _parse_awq,
        "gptq": _parse_gptq,
        "compressed-tensors": parse_compressed_tensors,
    }
    if method not in parsers:
        raise UnsupportedQuantization(
            f"quant_method {method or None!r} is not supported (supported: {', '.join(METHODS)})"
        )
    return parsers[method](raw)


def _parse_fp8(raw: dict[str, Any]) -> QuantConfig:
    fmt = raw.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise UnsupportedQuantization(f"fp8: fmt {fmt!r} is not supported (only e4m3)")
    activation = raw.get("activation_scheme", "dynamic")
    if activation not in ("dynamic", "static"):
        raise UnsupportedQuantization(f"fp8: activation_scheme {activation!r} is not supported")
    ignored = substring_patterns(
        (raw.get("ignored_layers") or []) + (raw.get("modules_to_not_convert") or [])
    )
    block = raw.get("weight_block_size")
    if block is None:
        scheme: QuantScheme = Fp8Scheme(serialized=True, static_input=activation == "static")
        return QuantConfig("fp8", scheme, ignored=ignored)
    if tuple(block) != BLOCK_FP8:
        raise UnsupportedQuantization(
            f"fp8: weight_block_size {list(block)} is not supported (only {list(BLOCK_FP8)})"
        )
    if activation != "dynamic":
        raise UnsupportedQuantization("fp8: block-wise weights with static activation scales")
    return QuantConfig("fp8", BlockFp8Scheme(BLOCK_FP8, "weight_scale_inv"), ignored=ignored)


def _check_int4(method: str, bits: Any, group_size: Any) -> int:
    if bits != 4:
        raise UnsupportedQuantization(f"{method}: {bits}-bit weights are not supported (only 4)")
    if not isinstance(group_size, int) or (
        group_size != -1 and (group_size <= 0 or group_size % INT4_GROUP_MULTIPLE)
    ):
        raise UnsupportedQuantization(
            f"{method}: group_size {group_size!r} is not supported (-1 or a multiple of "
            f"{INT4_GROUP_MULTIPLE})"
        )
    return group_size


def _parse_awq(raw: dict[str, Any]) -> QuantConfig:
    bits = raw.get("bits", raw.get("w_bit"))
    group_size = _check_int4("awq", bits, raw.get("group_size", raw.get("q_group_size")))
    version = str(raw.get("version", "gemm")).lower()
    if version != "gemm":
        raise UnsupportedQuantization(
            f"awq: version {version!r} is not supported (only the GEMM packing)"
        )
    if not raw.get("zero_point", True):
        raise UnsupportedQuantization("awq: zero_point false (symmetric AWQ) is not supported")
    ignored = substring_patterns(raw.get("modules_to_not_convert"))
    return QuantConfig("awq", Int4Scheme("awq", group_size), ignored=ignored)


def _parse_gptq(raw: dict[str, Any]) -> QuantConfig:
    group_size = _check_int4("gptq", raw.get("bits"), raw.get("group_size"))
    if raw.get("desc_act"):
        raise UnsupportedQuantization(
            "gptq: act-order (desc_act: true) is not supported: its g_idx permutes the groups"
        )
    checkpoint_format = raw.get("checkpoint_format") or "gptq"
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise UnsupportedQuantization(
            f"gptq: checkpoint_format {checkpoint_format!r} is not supported (gptq, gptq_v2)"
        )
    if raw.get("lm_head"):
        raise UnsupportedQuantization("gptq: a quantized lm_head is not supported")
    if raw.get("dynamic"):
        raise UnsupportedQuantization("gptq: per-module `dynamic` overrides are not supported")
    pack_dtype = raw.get("pack_dtype", "int32")
    if pack_dtype != "int32":
        raise UnsupportedQuantization(f"gptq: pack_dtype {pack_dtype!r} (only int32)")
    zero_offset = 1 if checkpoint_format == "gptq" else 0
    return QuantConfig("gptq", Int4Scheme("gptq", group_size, zero_offset))


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
