"""Which quantization a model runs: config.json's `quantization_config`, checked against
`--quantization` (named as vLLM names them), or FP8 from a bf16 checkpoint at load.

Anything this worker cannot run exactly as the checkpoint means it is refused here, at start-up,
with a message naming it (3-bit GPTQ, act-order, fp8 e5m2, AWQ's GEMV packing, ...): a format
read wrongly would serve plausible garbage.
"""

from typing import Any, Literal

from llm_worker.models.quant.compressed_tensors import parse_compressed_tensors
from llm_worker.models.quant.config import (
    BLOCK_FP8,
    DUMMY_INT4_GROUP,
    INT4_GROUP_MULTIPLE,
    METHODS,
    BlockFp8Scheme,
    Fp8Scheme,
    Int4Scheme,
    QuantConfig,
    QuantScheme,
    UnsupportedQuantization,
    substring_patterns,
)


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
