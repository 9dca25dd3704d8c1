"""The KV cache's storage format: its element type (`--kv-cache-dtype`) and, for FP8, each
layer's k/v scales.

FP8 is e4m3 (`torch.float8_e4m3fn`): 3 mantissa bits, range +-448, the format Hopper reads
natively. Scales come from the checkpoint where it has them (compressed-tensors'
`kv_cache_scheme`: `model.layers.N.self_attn.k_scale` / `v_scale`; its older
`k_proj.output_scale` / `v_proj.output_scale`; ModelOpt's `k_proj.k_scale` / `v_proj.v_scale`,
the names vLLM reads), else 1.0: a scale only moves values within e4m3's range, whose relative
precision is the same over all of it, and these models' K/V sit inside it (README, FP8 KV
cache).
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from llm_worker.kernels.reference import is_fp8
from llm_worker.models.attention import UNIT_KV_SCALE, KVScale

log = logging.getLogger(__name__)

FP8_NAMES = ("fp8", "fp8_e4m3")  # fp8_e4m3 is vLLM's alias
# Checkpoint tensor suffixes -> which scale of the layer they are.
_SCALE_SUFFIXES = {
    "self_attn.k_scale": "k",
    "self_attn.v_scale": "v",
    "self_attn.k_proj.output_scale": "k",
    "self_attn.v_proj.output_scale": "v",
    "self_attn.k_proj.k_scale": "k",
    "self_attn.v_proj.v_scale": "v",
}
# Ada and Hopper convert e4m3 in hardware; Triton refuses the type on earlier GPUs.
FP8_MIN_CAPABILITY = (8, 9)


class KVCacheFormatError(ValueError):
    """The asked-for KV cache format cannot be served; the message says why and what to do."""


@dataclass(frozen=True)
class KVCacheFormat:
    dtype: torch.dtype  # the cache's element type
    scales: tuple[KVScale, ...]  # one per layer; all 1 unless FP8 with checkpoint scales
    scales_from: str  # where the scales came from, for the log

    @property
    def name(self) -> str:
        return "fp8_e4m3" if is_fp8(self.dtype) else str(self.dtype).removeprefix("torch.")


def is_kv_scale_name(name: str) -> bool:
    """A checkpoint tensor that holds a KV-cache scale (read here, not a model weight)."""
    return name.endswith(tuple(_SCALE_SUFFIXES))


def resolve_kv_cache_format(
    name: str,
    model_dtype: torch.dtype,
    device: torch.device,
    folder: Path | None,
    num_layers: int,
) -> KVCacheFormat:
    """`auto`: the model's dtype, scales 1. `fp8` / `fp8_e4m3`: e4m3 with the checkpoint's
    per-layer scales, or 1.0 where it has none. `fp8_e5m2` is refused (not implemented)."""
    unit = (UNIT_KV_SCALE,) * num_layers
    if name == "auto":
        if folder is not None and _declared_scheme(folder) is not None:
            log.info("the checkpoint has FP8 KV-cache scales; --kv-cache-dtype fp8 uses them")
        return KVCacheFormat(model_dtype, unit, "none (not FP8)")
    if name == "fp8_e5m2":
        raise KVCacheFormatError(
            "--kv-cache-dtype fp8_e5m2 is not supported: use fp8 (e4m3, 3 mantissa bits against "
            "e5m2's 2, the format FP8 checkpoints calibrate their KV scales for)"
        )
    if name not in FP8_NAMES:
        raise KVCacheFormatError(f"--kv-cache-dtype {name!r}: choose auto, fp8 or fp8_e4m3")
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability(device)
        raise KVCacheFormatError(
            f"--kv-cache-dtype fp8 needs a GPU of compute capability 8.9 or later (Ada, Hopper);"
            f" this one is {major}.{minor}: use --kv-cache-dtype auto"
        )
    if folder is None:
        return KVCacheFormat(torch.float8_e4m3fn, unit, "1.0 (dummy weights)")
    scales = read_kv_scales(folder, num_layers)
    if scales is None:
        return KVCacheFormat(torch.float8_e4m3fn, unit, "1.0 (none in the checkpoint)")
    return KVCacheFormat(torch.float8_e4m3fn, scales, "the checkpoint")


def _declared_scheme(folder: Path) -> dict[str, Any] | None:
    config = json.loads((folder / "config.json").read_text())
    scheme = (config.get("quantization_config") or {}).get("kv_cache_scheme")
    return scheme if isinstance(scheme, dict) else None


def _check_scheme(scheme: dict[str, Any]) -> None:
    """Per-tensor static FP8 scales are what the kernels take; refuse anything else by name."""
    wanted = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False}
    for key, value in wanted.items():
        if scheme.get(key, value) != value:
            raise KVCacheFormatError(
                f"the checkpoint's kv_cache_scheme has {key}={scheme[key]!r}; only static "
                "per-tensor FP8 scales (num_bits 8, type float, strategy tensor) are supported"
            )


def read_kv_scales(folder: Path, num_layers: int) -> tuple[KVScale, ...] | None:
    """Each layer's scales from the checkpoint's safetensors, None if it has none at all."""
    scheme = _declared_scheme(folder)
    if scheme is not None:
        _check_scheme(scheme)
    found: dict[tuple[int, str], float] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for tensor_name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if is_kv_scale_name(tensor_name):
                    key = _layer_and_kind(tensor_name)
                    found[key] = _scalar(tensor_name, f.get_tensor(tensor_name))
    if not found:
        if scheme is not None:
            raise KVCacheFormatError(
                f"{folder} declares a kv_cache_scheme but holds no k_scale / v_scale tensors"
            )
        return None
    missing = [f"{kind}_scale of layer {i}" for i in range(num_layers) for kind in "kv"
               if (i, kind) not in found]  # fmt: skip
    if missing:
        raise KVCacheFormatError(f"{folder} has KV-cache scales, but not {missing[:4]}")
    return tuple(KVScale(found[(i, "k")], found[(i, "v")]) for i in range(num_layers))


def _layer_and_kind(tensor_name: str) -> tuple[int, str]:
    parts = tensor_name.split(".")
    suffix = next(s for s in _SCALE_SUFFIXES if tensor_name.endswith(s))
    if "layers" not in parts or not parts[parts.index("layers") + 1].isdigit():
        raise KVCacheFormatError(f"KV-cache scale {tensor_name!r} names no layer")
    return int(parts[parts.index("layers") + 1]), _SCALE_SUFFIXES[suffix]


def _scalar(tensor_name: str, tensor: torch.Tensor) -> float:
    if tensor.numel() != 1:
        raise KVCacheFormatError(
            f"{tensor_name} holds {tensor.numel()} values: only per-tensor KV-cache scales "
            "are supported, not per-head ones"
        )
    value = float(tensor.float())
    if not (value > 0 and value != float("inf")):
        raise KVCacheFormatError(f"{tensor_name} is {value}: a KV-cache scale must be positive")
    return value


def apply_kv_scales(model: nn.Module, scales: tuple[KVScale, ...]) -> None:
    """Give each attention layer its scales (at load, before any step runs)."""
    layers = list(model.model.layers)  # type: ignore[union-attr, arg-type]
    if len(layers) != len(scales):
        raise KVCacheFormatError(f"{len(scales)} layers of KV scales for {len(layers)} layers")
    for layer, scale in zip(layers, scales, strict=True):
        layer.self_attn.kv_scale = scale
