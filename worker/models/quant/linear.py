"""Linear layers whose output concatenates shards (q|k|v, gate|up, or one), each shard loaded
from its own checkpoint module; `DenseLinear` keeps the weight in the activation dtype, the
quantized ones (fp8.py, block_fp8.py, int4.py) as their format keeps it.

A layer also says what form its input should come in, so the kernel before it can produce that
form directly: an FP8 layer has the RMSNorm or SiLU*mul feeding it quantize their output.
"""

import itertools

import torch
from torch import nn

from llm_worker.kernels.fp8_format import Fp8Activation
from llm_worker.models.elementwise import ElementwiseOps
from llm_worker.models.layers import RMSNorm
from llm_worker.models.quant.spec import LinearSpec

LinearInput = torch.Tensor | Fp8Activation


class CheckpointMismatch(ValueError):
    """A checkpoint tensor whose shape or dtype does not fit the layer it belongs to."""


def check_tensor(
    name: str, tensor: torch.Tensor, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]
) -> None:
    if tuple(tensor.shape) != shape or tensor.dtype not in dtypes:
        raise CheckpointMismatch(
            f"checkpoint tensor {name} is {_dtype_name(tensor.dtype)} {list(tensor.shape)}; "
            f"expected {'/'.join(_dtype_name(d) for d in dtypes)} {list(shape)}"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ShardedLinear(nn.Module):
    """Loading protocol: `load` each checkpoint tensor of each shard, then `finish_loading`
    (checks that every expected tensor came, then derives what the kernels read); or
    `fill_dummy` instead, for random weights of the same form."""

    kind = "dense"  # names the layer's form in messages
    bias: nn.Parameter | None

    def __init__(self, spec: LinearSpec, ops: ElementwiseOps) -> None:
        super().__init__()
        self.spec = spec
        self.ops = ops
        self.shard_sizes = spec.shard_sizes
        bias = torch.empty(spec.out_features, dtype=spec.dtype) if spec.bias else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self._loaded: set[tuple[str, int]] = set()  # (suffix, shard) seen by `load`

    def expected_tensors(self) -> set[str]:
        """Suffixes (weight, weight_scale, qweight, ...) each shard's module must bring."""
        return {"bias"} if self.spec.bias else set()

    def optional_tensors(self) -> set[str]:
        return set()

    def load(self, suffix: str, shard: int, tensor: torch.Tensor) -> None:
        name = f"{self.spec.names[shard]}.{suffix}"
        if suffix == "bias" and not self.spec.bias:
            # GPTQ's QuantLinear saves a bias for every layer: zeros where the model has none
            if tensor.count_nonzero() == 0:
                return
            raise CheckpointMismatch(f"checkpoint tensor {name} is a nonzero bias the model lacks")
        if suffix not in self.expected_tensors() | self.optional_tensors():
            raise KeyError(f"checkpoint tensor {name!r} has no place in a {self.kind} layer")
        if (suffix, shard) in self._loaded:
            raise CheckpointMismatch(f"checkpoint tensor {name} appears twice")
        with torch.no_grad():
            self._load(name, suffix, shard, tensor)
        self._loaded.add((suffix, shard))

    def _load(self, name: str, suffix: str, shard: int, tensor: torch.Tensor) -> None:
        assert suffix == "bias" and self.bias is not None
        rows = self.spec.shard_rows(shard)
        check_tensor(name, tensor, (rows.stop - rows.start,), FLOAT_DTYPES)
        self.bias[rows].copy_(tensor)

    def finish_loading(self) -> None:
        missing = [
            f"{module}.{suffix}"
            for shard, module in enumerate(self.spec.names)
            for suffix in sorted(self.expected_tensors())
            if (suffix, shard) not in self._loaded
        ]
        if missing:
            raise KeyError(f"checkpoint lacks {missing[:5]} ({len(missing)} tensors)")
        with torch.no_grad():
            self._after_loading()

    def _after_loading(self) -> None:
        pass

    def fill_dummy(self, generator: torch.Generator) -> None:
        """Random weights of this layer's form: N(0, 0.02) before quantization, zero bias."""
        with torch.no_grad():
            self._fill_dummy(generator)
            if self.bias is not None:
                self.bias.zero_()

    def _fill_dummy(self, generator: torch.Generator) -> None:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes a forward pass reads from this layer's weights, scales and bias."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def rms_norm_input(
        self, norm: RMSNorm, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[LinearInput, torch.Tensor]:
        """`norm(x, residual)` in the form this layer's GEMM takes."""
        return norm(x, residual)

    def silu_and_mul_input(self, gate_up: torch.Tensor) -> LinearInput:
        """SiLU*mul of a gate|up output in the form this layer's GEMM takes."""
        return self.ops.silu_and_mul(gate_up)

    def forward(self, x: LinearInput) -> torch.Tensor:  # [num_tokens, out_features]
        raise NotImplementedError


def dense_input(x: LinearInput) -> torch.Tensor:
    assert isinstance(x, torch.Tensor), "only FP8 layers take quantized inputs"
    return x


class DenseLinear(ShardedLinear):
    """The weight in the activation dtype: [out_features, in_features], as nn.Linear."""

    def __init__(self, spec: LinearSpec, ops: ElementwiseOps) -> None:
        super().__init__(spec, ops)
        weight = torch.empty(spec.out_features, spec.in_features, dtype=spec.dtype)
        self.weight = nn.Parameter(weight, requires_grad=False)

    def expected_tensors(self) -> set[str]:
        return super().expected_tensors() | {"weight"}

    def _load(self, name: str, suffix: str, shard: int, tensor: torch.Tensor) -> None:
        if suffix != "weight":
            return super()._load(name, suffix, shard, tensor)
        rows = self.spec.shard_rows(shard)
        shape = (rows.stop - rows.start, self.spec.in_features)
        check_tensor(name, tensor, shape, FLOAT_DTYPES)
        self.weight[rows].copy_(tensor)

    def _fill_dummy(self, generator: torch.Generator) -> None:
        self.weight.normal_(0.0, 0.02, generator=generator)

    def forward(self, x: LinearInput) -> torch.Tensor:
        return nn.functional.linear(dense_input(x), self.weight, self.bias)
