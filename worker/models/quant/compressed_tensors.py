"""compressed-tensors checkpoints (llm-compressor's format) that hold FP8 weights.

The reference is the `compressed_tensors` package (its QuantizationConfig, QuantizationScheme,
QuantizationArgs and FloatQuantizationCompressor; the tests write checkpoints with it). Read:
`float-quantized` / `naive-quantized` e4m3 weights, symmetric, with per-channel, per-tensor or
[128, 128] block scales (`weight_scale`), and e4m3 activations: dynamic per token or per tensor
(both quantized per token here: nothing in the checkpoint depends on it), static per tensor
(`input_scale`), or dynamic per 128-wide group with block weights. Everything else is refused.
"""

import re
from typing import Any

from llm_worker.models.quant.config import (
    BLOCK_FP8,
    BlockFp8Scheme,
    Fp8Scheme,
    QuantConfig,
    QuantScheme,
    UnsupportedQuantization,
)

FP8_FORMATS = ("float-quantized", "naive-quantized")
# The FP8 presets a config group may name instead of spelling out its scheme.
PRESETS: dict[str, QuantScheme] = {
    "FP8": Fp8Scheme(serialized=True, static_input=True),
    "FP8_DYNAMIC": Fp8Scheme(serialized=True, static_input=False),
    "FP8_BLOCK": BlockFp8Scheme(BLOCK_FP8, "weight_scale"),
}


def _refuse(what: str) -> UnsupportedQuantization:
    return UnsupportedQuantization(f"compressed-tensors: {what} is not supported")


def parse_compressed_tensors(raw: dict[str, Any]) -> QuantConfig | None:
    """None: a config with a kv_cache_scheme alone (bf16 weights, an FP8 cache's scales; read
    by models/kv_cache_format.py)."""
    for key in ("sparsity_config", "transform_config"):
        if raw.get(key):
            raise _refuse(f"a {key}")
    status = raw.get("quantization_status", "compressed")
    if status != "compressed":
        raise _refuse(f"quantization_status {status!r} (weights not stored quantized)")
    groups = raw.get("config_groups") or {}
    if not groups:
        if raw.get("kv_cache_scheme"):
            return None
        raise _refuse("a quantization_config without config_groups")
    schemes, targets = set(), []
    for name, group in groups.items():
        if isinstance(group, list):  # a preset's name, mapped to its targets
            if name not in PRESETS:
                raise _refuse(f"the preset scheme {name!r}")
            schemes.add(PRESETS[name])
            targets += group
        else:
            schemes.add(_group_scheme(group, group.get("format") or raw.get("format")))
            targets += group.get("targets") or []
    if len(schemes) != 1:
        raise _refuse(f"config_groups with different schemes ({', '.join(groups)})")
    config = QuantConfig(
        "compressed-tensors",
        schemes.pop(),
        targets=tuple(_target_pattern(t) for t in targets),
        ignored=tuple(_name_pattern(t) for t in raw.get("ignore") or []),
    )
    if config.scheme_for(["lm_head"]) is not None:
        raise _refuse("a quantized lm_head (the head stays in the activation dtype)")
    return config


def _check_fp8_args(args: dict[str, Any], role: str) -> None:
    if args.get("type") != "float" or args.get("num_bits") != 8:
        raise _refuse(f"{role} of {args.get('num_bits')}-bit {args.get('type')} (only FP8)")
    if not args.get("symmetric", True):
        raise _refuse(f"asymmetric FP8 {role}")


def _group_scheme(group: dict[str, Any], fmt: str | None) -> QuantScheme:
    weights, inputs = group.get("weights"), group.get("input_activations")
    if group.get("output_activations"):
        raise _refuse("output_activations quantization")
    if weights is None:
        raise _refuse("a config group without quantized weights")
    _check_fp8_args(weights, "weights")
    if fmt not in FP8_FORMATS:
        raise _refuse(f"format {fmt!r} for FP8 weights (only {', '.join(FP8_FORMATS)})")
    if weights.get("dynamic"):
        raise _refuse("dynamic weight scales")
    if inputs is None:
        raise _refuse("FP8 weights with unquantized activations (W8A16)")
    _check_fp8_args(inputs, "input_activations")
    strategy, dynamic = weights.get("strategy"), inputs.get("dynamic")
    if dynamic not in (True, False):
        raise _refuse(f"input_activations dynamic={dynamic!r}")
    if strategy == "block":
        block = tuple(weights.get("block_structure") or ())
        if block != BLOCK_FP8:
            raise _refuse(f"block_structure {list(block)} (only {list(BLOCK_FP8)})")
        if not dynamic:
            raise _refuse("block-wise FP8 weights with static activation scales")
        return BlockFp8Scheme(BLOCK_FP8, "weight_scale")
    if strategy not in ("channel", "tensor"):
        raise _refuse(f"FP8 weights with the {strategy!r} strategy")
    if dynamic:
        if inputs.get("strategy") not in ("token", "tensor"):
            raise _refuse(f"dynamic {inputs.get('strategy')!r} activation scales")
        return Fp8Scheme(serialized=True, static_input=False)
    if inputs.get("strategy") != "tensor":
        raise _refuse(f"static {inputs.get('strategy')!r} activation scales")
    return Fp8Scheme(serialized=True, static_input=True)


def _name_pattern(name: str) -> str:
    """A target or ignore entry as a regex over module names: `re:` ones as written, others
    one module's exact name."""
    return name[3:] if name.startswith("re:") else re.escape(name) + "$"


def _target_pattern(target: str) -> str:
    if target == "Linear":  # every layer asked about here is a linear one
        return ".*"
    if not target.startswith("re:") and "." not in target and "_" not in target:
        raise _refuse(f"the target {target!r} (Linear, module names and re: patterns)")
    return _name_pattern(target)
