"""Block-wise FP8 linear layers: e4m3 weights with one fp32 scale per 128 x 128 block, as
Qwen3's and DeepSeek-V3's FP8 releases (`weight_scale_inv`, despite its name the multiplier)
and compressed-tensors' FP8_BLOCK (`weight_scale`). Activations are quantized per token and
128-wide group inside the GEMM (`kernels.block_fp8_gemm`).

The shards of a fused layer keep their own blocks: each shard but the last must start on a
block row, which every Qwen3 and Llama shape does (q, k, v and gate, up are multiples of 128).
"""

import torch

from llm_worker.kernels.fp8_format import FP8_DTYPE, FP8_MAX, FP8_MIN_SCALE
from llm_worker.models.elementwise import ElementwiseOps
from llm_worker.models.quant.config import BlockFp8Scheme, UnsupportedQuantization
from llm_worker.models.quant.gemms import QuantGemms
from llm_worker.models.quant.linear import (
    LinearInput,
    ShardedLinear,
    check_tensor,
    dense_input,
)
from llm_worker.models.quant.spec import LinearSpec


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def quantize_block_fp8(
    weight: torch.Tensor,  # [N, K] float
    block: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:  # [N, K] e4m3, [cdiv(N, bn), cdiv(K, bk)] fp32
    """One absmax scale per block (for dummy weights; checkpoints bring their own)."""
    (n, k), (block_n, block_k) = weight.shape, block
    padded = torch.zeros(cdiv(n, block_n) * block_n, cdiv(k, block_k) * block_k,
                         dtype=torch.float32, device=weight.device)  # fmt: skip
    padded[:n, :k] = weight.float()
    blocks = padded.view(padded.shape[0] // block_n, block_n, padded.shape[1] // block_k, block_k)
    scale = (blocks.abs().amax(dim=(1, 3), keepdim=True) / FP8_MAX).clamp(min=FP8_MIN_SCALE)
    data = (blocks / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).view(padded.shape)
    return data[:n, :k].contiguous(), scale[:, 0, :, 0].contiguous()


class BlockFp8Linear(ShardedLinear):
    kind = "block-wise fp8"
    weight: torch.Tensor  # [out_features, in_features] float8_e4m3fn
    weight_scale: torch.Tensor  # [cdiv(out, 128), cdiv(in, 128)] fp32

    def __init__(
        self, spec: LinearSpec, ops: ElementwiseOps, gemms: QuantGemms, scheme: BlockFp8Scheme
    ) -> None:
        super().__init__(spec, ops)
        self.scheme, self.gemms = scheme, gemms
        block_n, block_k = scheme.block
        for name, size in zip(spec.names[:-1], spec.shard_sizes[:-1], strict=True):
            if size % block_n:
                raise UnsupportedQuantization(
                    f"block-wise fp8: {name} has {size} output rows, not a multiple of the "
                    f"{block_n}-row weight blocks, and shares a fused layer with the next shard"
                )
        n, k = spec.out_features, spec.in_features
        self.register_buffer("weight", torch.empty(n, k, dtype=FP8_DTYPE))
        self.register_buffer(
            "weight_scale", torch.empty(cdiv(n, block_n), cdiv(k, block_k), dtype=torch.float32)
        )

    def expected_tensors(self) -> set[str]:
        return super().expected_tensors() | {"weight", self.scheme.scale_name}

    def _load(self, name: str, suffix: str, shard: int, tensor: torch.Tensor) -> None:
        rows = self.spec.shard_rows(shard)
        num_rows, k = rows.stop - rows.start, self.spec.in_features
        block_n, block_k = self.scheme.block
        if suffix == "weight":
            if tensor.dtype == torch.float8_e5m2:
                raise UnsupportedQuantization(f"{name}: fp8 e5m2 weights (only e4m3)")
            check_tensor(name, tensor, (num_rows, k), (FP8_DTYPE,))
            self.weight[rows] = tensor
        elif suffix == self.scheme.scale_name:
            shape = (cdiv(num_rows, block_n), cdiv(k, block_k))
            check_tensor(name, tensor, shape, (torch.float32, torch.bfloat16, torch.float16))
            first = rows.start // block_n
            self.weight_scale[first : first + shape[0]] = tensor.float()
        else:
            super()._load(name, suffix, shard, tensor)

    def _fill_dummy(self, generator: torch.Generator) -> None:
        dense = torch.empty(self.weight.shape, dtype=self.spec.dtype, device=self.weight.device)
        dense.normal_(0.0, 0.02, generator=generator)
        for shard in range(len(self.spec.shard_sizes)):  # each shard its own blocks, as loaded
            rows = self.spec.shard_rows(shard)
            data, scale = quantize_block_fp8(dense[rows], self.scheme.block)
            first = rows.start // self.scheme.block[0]
            self.weight[rows] = data
            self.weight_scale[first : first + scale.shape[0]] = scale

    def forward(self, x: LinearInput) -> torch.Tensor:
        return self.gemms.block_fp8_linear(
            dense_input(x), self.weight, self.weight_scale, self.scheme.block, self.bias
        )
