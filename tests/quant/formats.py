"""Quantized checkpoints the tests write in each format, with the truth for the oracle.

Each writer turns one linear layer's dense weight [N, K] into the checkpoint tensors of its
format (real names, dtypes and packing) and returns, beside them, the dequantized weight and
the input quantization the format implies, which an HF transformers model then runs with
(tests/quant/oracle.py). The packers here are written from the formats' own descriptions
(AutoAWQ's WQLinear_GEMM, GPTQ's QuantLinear, compressed-tensors' compressor, which is used
as it is), apart from the worker's code under test. compressed-tensors is imported where it is
used: the GPU machine may lack it, and the int4 and block-FP8 writers do not need it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

FP8 = torch.float8_e4m3fn
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
InputQuant = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Quantized:
    tensors: dict[str, torch.Tensor]  # suffix (qweight, weight_scale, ...) -> checkpoint tensor
    dequantized: torch.Tensor  # [N, K] fp32: the weight the format means
    input_quant: InputQuant | None = None  # the input's fake quantization, if the format has one


Quantizer = Callable[[str, torch.Tensor], Quantized]  # (module name, dense [N, K]) -> Quantized


# --- int4: AWQ (GEMM) and GPTQ -------------------------------------------------------------


def _pack_nibbles(values: np.ndarray, axis_order: list[int] | None = None) -> torch.Tensor:
    """[R, C] of 0..15 -> [R, C // 8] int32: nibble i of int32 c holds column 8c + order[i]."""
    order = axis_order or list(range(8))
    packed = np.zeros((values.shape[0], values.shape[1] // 8), dtype=np.uint32)
    for i in range(8):
        packed |= values[:, order[i] :: 8].astype(np.uint32) << np.uint32(4 * i)
    return torch.from_numpy(packed.view(np.int32))


AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's order_map


def _random_int4(k: int, n: int, group: int, gen: torch.Generator, zeros: str):
    q = torch.randint(0, 16, (k, n), generator=gen)
    if zeros == "sym":
        z = torch.full((k // group, n), 8)
    else:  # 1..15: GPTQ v1 stores zero - 1, and a zero of 0 does not survive that
        z = torch.randint(1, 16, (k // group, n), generator=gen)
    scales = (torch.rand(k // group, n, generator=gen) * 0.004 + 0.002).half()
    g = torch.arange(k) // group
    dequantized = ((q - z[g]).float() * scales[g].float()).T.contiguous()  # [N, K]
    return q.numpy(), z.numpy(), scales, dequantized


def awq(group: int, seed: int = 0) -> Quantizer:
    gen = torch.Generator().manual_seed(seed)

    def quantize(name: str, dense: torch.Tensor) -> Quantized:
        n, k = dense.shape
        q, z, scales, dequantized = _random_int4(k, n, group, gen, "asym")
        tensors = {
            "qweight": _pack_nibbles(q, AWQ_PACK_ORDER),  # [K, N // 8]
            "qzeros": _pack_nibbles(z, AWQ_PACK_ORDER),  # [K // group, N // 8]
            "scales": scales,  # [K // group, N]
        }
        return Quantized(tensors, dequantized)

    return quantize


def gptq(group: int, sym: bool, v1: bool, seed: int = 0) -> Quantizer:
    gen = torch.Generator().manual_seed(seed)

    def quantize(name: str, dense: torch.Tensor) -> Quantized:
        n, k = dense.shape
        q, z, scales, dequantized = _random_int4(k, n, group, gen, "sym" if sym else "asym")
        stored_zeros = (z - 1) & 0xF if v1 else z
        tensors = {
            "qweight": _pack_nibbles(q.T.copy()).T.contiguous(),  # [K // 8, N], along K
            "qzeros": _pack_nibbles(stored_zeros),  # [K // group, N // 8]
            "scales": scales,
            "g_idx": (torch.arange(k) // group).to(torch.int32),
        }
        return Quantized(tensors, dequantized)

    return quantize


def awq_config(group: int) -> dict:
    return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
            "version": "gemm"}  # fmt: skip


def gptq_config(group: int, sym: bool, v1: bool) -> dict:
    return {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": False,
            "sym": sym, "checkpoint_format": "gptq" if v1 else "gptq_v2"}  # fmt: skip


# --- FP8 -----------------------------------------------------------------------------------


def fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Dynamic per-token FP8, as compressed-tensors fake-quantizes it."""
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    scheme = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 448
    return fake_quantize(x, scale, None, scheme.input_activations)


def fp8_per_group(x: torch.Tensor) -> torch.Tensor:
    """Dynamic FP8 per token and 128-wide group (block-FP8 checkpoints' activations)."""
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    scheme = preset_name_to_scheme("FP8_BLOCK", ["Linear"])
    groups = x.reshape(*x.shape[:-1], -1, 128)
    scale = groups.abs().amax(-1).clamp(min=1e-12) / 448
    return fake_quantize(x, scale, None, scheme.input_activations)


# Static input scales by the input a projection reads (q, k, v share one, as calibration gives).
STATIC_INPUT_SCALES = {"q_proj": 0.011, "k_proj": 0.011, "v_proj": 0.011, "o_proj": 0.004,
                       "gate_proj": 0.012, "up_proj": 0.012, "down_proj": 0.002}  # fmt: skip


def compressed_tensors_fp8(preset: str) -> Quantizer:
    """FP8_DYNAMIC (channel weights, dynamic tokens), FP8 (tensor weights, static input
    scales) or FP8_BLOCK: scales computed here, weights compressed by compressed-tensors."""
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize, fake_quantize

    scheme = preset_name_to_scheme(preset, ["Linear"])

    def quantize(name: str, dense: torch.Tensor) -> Quantized:
        n, k = dense.shape
        if preset == "FP8_BLOCK":
            blocks = dense.reshape(n // 128, 128, k // 128, 128)
            scale = blocks.abs().amax(dim=(1, 3)) / 448
        elif preset == "FP8":
            scale = dense.abs().amax().reshape(1) / 448
        else:
            scale = dense.abs().amax(1, keepdim=True) / 448
        tensors = FloatQuantizationCompressor.compress(
            {"weight": dense, "weight_scale": scale}, scheme
        )
        w = dequantize(tensors["weight"], tensors["weight_scale"], args=scheme.weights,
                       dtype=torch.float32)  # fmt: skip
        input_quant: InputQuant = fp8_per_group if preset == "FP8_BLOCK" else fp8_per_token
        if preset == "FP8":
            input_scale = torch.tensor([STATIC_INPUT_SCALES[name.rsplit(".", 1)[1]]])
            tensors["input_scale"] = input_scale
            args = scheme.input_activations
            input_quant = lambda x: fake_quantize(x, input_scale, None, args)  # noqa: E731
        return Quantized(dict(tensors), w, input_quant)

    return quantize


def compressed_tensors_config(preset: str) -> dict:
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    config = QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme(preset, ["Linear"])},
        format="float-quantized",
        quantization_status="compressed",
        ignore=["lm_head"],
    )
    return config.model_dump(mode="json")


def block_fp8_inv() -> Quantizer:
    """quant_method fp8 with weight_block_size [128, 128] (Qwen3-8B-FP8): `weight_scale_inv`
    is the block's multiplier."""

    def quantize(name: str, dense: torch.Tensor) -> Quantized:
        n, k = dense.shape
        blocks = dense.reshape(n // 128, 128, k // 128, 128)
        scale = blocks.abs().amax(dim=(1, 3), keepdim=True) / 448
        weight = (blocks / scale).to(FP8).reshape(n, k)
        dequantized = (weight.float().reshape(blocks.shape) * scale).reshape(n, k)
        tensors = {"weight": weight, "weight_scale_inv": scale[:, 0, :, 0].contiguous()}
        return Quantized(tensors, dequantized, fp8_per_group)

    return quantize


BLOCK_FP8_CONFIG = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                    "weight_block_size": [128, 128]}  # fmt: skip


def fp8_at_load() -> Quantizer:
    """What --quantization fp8 does to a dense checkpoint: per-channel e4m3, dynamic tokens
    (for the oracle only: the checkpoint stays dense)."""
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    scheme = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])

    def quantize(name: str, dense: torch.Tensor) -> Quantized:
        scale = dense.abs().amax(1, keepdim=True) / 448
        w = fake_quantize(dense, scale, None, scheme.weights)
        return Quantized({"weight": dense}, w, fp8_per_token)

    return quantize


# Formats by name, built on demand: (quantizer, quantization_config)
CHECKPOINT_FORMATS: dict[str, Callable[[], tuple[Quantizer, dict]]] = {
    "awq": lambda: (awq(128), awq_config(128)),
    "gptq": lambda: (gptq(64, False, True), gptq_config(64, False, True)),
    "ct-fp8-dynamic": lambda: (compressed_tensors_fp8("FP8_DYNAMIC"),
                               compressed_tensors_config("FP8_DYNAMIC")),
    "ct-fp8-static": lambda: (compressed_tensors_fp8("FP8"), compressed_tensors_config("FP8")),
    "fp8-block": lambda: (block_fp8_inv(), BLOCK_FP8_CONFIG),
}  # fmt: skip
NEEDS_COMPRESSED_TENSORS = {"ct-fp8-dynamic", "ct-fp8-static"}
