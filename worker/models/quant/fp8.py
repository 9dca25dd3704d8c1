"""FP8 linear layers with a scale per output channel: `--quantization fp8` on a bf16 checkpoint
(quantized here, at load) and FP8 checkpoints with per-channel or per-tensor weight scales.

A per-tensor scale becomes the scale of each channel of its shard, so the shards of a fused
layer keep their own scales and the GEMM needs one form only: a scale per token times a scale
per channel (torch._scaled_mm's rowwise scaling on the GPU). Static input scales of fused
shards (q, k and v each calibrated on the same input) become their maximum: a scale no shard
clips under.
"""

import torch

from llm_worker.kernels import reference
from llm_worker.kernels.fp8_format import FP8_DTYPE, Fp8Activation
from llm_worker.models.elementwise import ElementwiseOps
from llm_worker.models.layers import RMSNorm
from llm_worker.models.quant.config import Fp8Scheme, UnsupportedQuantization
from llm_worker.models.quant.gemms import QuantGemms
from llm_worker.models.quant.linear import (
    FLOAT_DTYPES,
    LinearInput,
    ShardedLinear,
    check_tensor,
)
from llm_worker.models.quant.spec import LinearSpec

# Dummy static input scale: activations of a random model after RMSNorm reach about 4.
DUMMY_INPUT_SCALE = 4.0 / 448.0


def quantize_fp8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> ([N, K] e4m3, [N] fp32): one absmax scale per row (output channel), the
    activations' per-token rule applied to the weight's rows."""
    quantized = reference.quantize_fp8(weight)
    return quantized.data, quantized.scale.squeeze(1)


class Fp8Linear(ShardedLinear):
    kind = "fp8"
    weight: torch.Tensor  # [out_features, in_features] float8_e4m3fn
    weight_scale: torch.Tensor  # [out_features] fp32
    input_scale: torch.Tensor | None  # [1] fp32, static activation scale
    shard_input_scales: torch.Tensor | None  # [num_shards] fp32, as loaded

    def __init__(
        self, spec: LinearSpec, ops: ElementwiseOps, gemms: QuantGemms, scheme: Fp8Scheme
    ) -> None:
        super().__init__(spec, ops)
        self.scheme, self.gemms = scheme, gemms
        n, k = spec.out_features, spec.in_features
        self.register_buffer("weight", torch.empty(n, k, dtype=FP8_DTYPE))
        self.register_buffer("weight_scale", torch.empty(n, dtype=torch.float32))
        static = scheme.static_input
        num_shards = len(spec.shard_sizes)
        self.register_buffer("input_scale", torch.empty(1) if static else None)
        self.register_buffer("shard_input_scales", torch.empty(num_shards) if static else None)

    def expected_tensors(self) -> set[str]:
        if not self.scheme.serialized:
            return super().expected_tensors() | {"weight"}
        static = {"input_scale"} if self.scheme.static_input else set()
        return super().expected_tensors() | {"weight", "weight_scale"} | static

    def _load(self, name: str, suffix: str, shard: int, tensor: torch.Tensor) -> None:
        rows = self.spec.shard_rows(shard)
        num_rows = rows.stop - rows.start
        if suffix == "weight":
            shape = (num_rows, self.spec.in_features)
            if not self.scheme.serialized:
                check_tensor(name, tensor, shape, FLOAT_DTYPES)
                data, scale = quantize_fp8_rows(tensor.to(self.weight.device))
                self.weight[rows], self.weight_scale[rows] = data, scale
                return
            if tensor.dtype == torch.float8_e5m2:
                raise UnsupportedQuantization(f"{name}: fp8 e5m2 weights (only e4m3)")
            check_tensor(name, tensor, shape, (FP8_DTYPE,))
            self.weight[rows] = tensor
        elif suffix == "weight_scale":
            if tensor.numel() == 1:  # per tensor: every channel of the shard
                self.weight_scale[rows] = tensor.float().reshape(())
            elif tuple(tensor.shape) in ((num_rows,), (num_rows, 1)):
                self.weight_scale[rows] = tensor.float().reshape(num_rows)
            else:
                check_tensor(name, tensor, (num_rows, 1), FLOAT_DTYPES)  # names what it wants
        elif suffix == "input_scale":
            assert self.shard_input_scales is not None
            if tensor.numel() != 1:
                check_tensor(name, tensor, (1,), FLOAT_DTYPES)
            self.shard_input_scales[shard] = tensor.float().reshape(())
        else:
            super()._load(name, suffix, shard, tensor)

    def _after_loading(self) -> None:
        if self.input_scale is not None and self.shard_input_scales is not None:
            self.input_scale.copy_(self.shard_input_scales.max().reshape(1))

    def _fill_dummy(self, generator: torch.Generator) -> None:
        dense = torch.empty(self.weight.shape, dtype=self.spec.dtype, device=self.weight.device)
        dense.normal_(0.0, 0.02, generator=generator)
        self.weight[:], self.weight_scale[:] = quantize_fp8_rows(dense)
        if self.input_scale is not None and self.shard_input_scales is not None:
            self.shard_input_scales.fill_(DUMMY_INPUT_SCALE)
            self.input_scale.fill_(DUMMY_INPUT_SCALE)

    def rms_norm_input(
        self, norm: RMSNorm, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[LinearInput, torch.Tensor]:
        return self.ops.rms_norm_fp8(x, norm.weight, norm.eps, residual, self.input_scale)

    def silu_and_mul_input(self, gate_up: torch.Tensor) -> LinearInput:
        return self.ops.silu_and_mul_fp8(gate_up, self.input_scale)

    def forward(self, x: LinearInput) -> torch.Tensor:
        if not isinstance(x, Fp8Activation):
            x = self.ops.quantize_fp8(x, self.input_scale)
        return self.gemms.fp8_linear(x, self.weight, self.weight_scale, self.bias, self.spec.dtype)
