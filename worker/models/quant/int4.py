"""4-bit weight-only linear layers (W4A16) from AWQ (GEMM) and GPTQ checkpoints.

Both are repacked at load into the layout of `kernels.w4a16` (int4_packing.py says how each
format packs): a shard's tensors land in its columns of the fused layer, so q|k|v and gate|up
keep their own scales and zeros. GPTQ's g_idx must be the identity order (no act-order); a
checkpoint whose g_idx permutes the groups is refused.
"""

import torch

from llm_worker.models.elementwise import ElementwiseOps
from llm_worker.models.quant.config import Int4Scheme, UnsupportedQuantization
from llm_worker.models.quant.gemms import QuantGemms
from llm_worker.models.quant.int4_packing import (
    AWQ_ORDER,
    IN_ORDER,
    NIBBLES,
    pack_rows,
    unpack_columns,
)
from llm_worker.models.quant.linear import (
    FLOAT_DTYPES,
    LinearInput,
    ShardedLinear,
    check_tensor,
    dense_input,
)
from llm_worker.models.quant.spec import LinearSpec

DUMMY_ZERO = 8
DUMMY_SCALE = 0.02 / 4.6  # codes uniform in 0..15 minus 8 have a std of about 4.6


class Int4Linear(ShardedLinear):
    kind = "int4"
    qweight: torch.Tensor  # [in // 8, out] int32
    scales: torch.Tensor  # [in // group, out] float16
    zeros: torch.Tensor  # [in // group, out] uint8

    def __init__(
        self, spec: LinearSpec, ops: ElementwiseOps, gemms: QuantGemms, scheme: Int4Scheme
    ) -> None:
        super().__init__(spec, ops)
        self.scheme, self.gemms = scheme, gemms
        k, n = spec.in_features, spec.out_features
        self.group_size = k if scheme.group_size == -1 else scheme.group_size
        if k % self.group_size or self.group_size % 32:
            raise UnsupportedQuantization(
                f"{scheme.method}: {spec.names[0]} has {k} input features, which groups of "
                f"{self.group_size} do not tile (the W4A16 kernel needs groups of a multiple "
                "of 32 that divide K)"
            )
        for name, size in zip(spec.names, spec.shard_sizes, strict=True):
            if size % NIBBLES:
                raise UnsupportedQuantization(f"{scheme.method}: {name} has {size} outputs")
        num_groups = k // self.group_size
        self.register_buffer("qweight", torch.empty(k // NIBBLES, n, dtype=torch.int32))
        self.register_buffer("scales", torch.empty(num_groups, n, dtype=torch.float16))
        self.register_buffer("zeros", torch.empty(num_groups, n, dtype=torch.uint8))

    def expected_tensors(self) -> set[str]:
        return super().expected_tensors() | {"qweight", "qzeros", "scales"}

    def optional_tensors(self) -> set[str]:
        return {"g_idx"} if self.scheme.method == "gptq" else set()

    def _load(self, name: str, suffix: str, shard: int, tensor: torch.Tensor) -> None:
        cols = self.spec.shard_rows(shard)  # the shard's output features: columns here
        n, k = cols.stop - cols.start, self.spec.in_features
        num_groups = k // self.group_size
        awq = self.scheme.method == "awq"
        if suffix == "qweight":
            check_tensor(name, tensor, (k, n // NIBBLES) if awq else (k // NIBBLES, n),
                         (torch.int32,))  # fmt: skip
            tensor = tensor.to(self.qweight.device)
            self.qweight[:, cols] = pack_rows(unpack_columns(tensor, AWQ_ORDER)) if awq else tensor
        elif suffix == "qzeros":
            check_tensor(name, tensor, (num_groups, n // NIBBLES), (torch.int32,))
            zeros = unpack_columns(tensor.to(self.zeros.device), AWQ_ORDER if awq else IN_ORDER)
            self.zeros[:, cols] = (zeros + self.scheme.zero_offset).to(torch.uint8)
        elif suffix == "scales":
            check_tensor(name, tensor, (num_groups, n), FLOAT_DTYPES)
            scales = tensor.to(torch.float16)
            if not torch.equal(scales.to(tensor.dtype), tensor):
                raise UnsupportedQuantization(f"{name}: scales that float16 does not hold")
            self.scales[:, cols] = scales
        elif suffix == "g_idx":
            check_tensor(name, tensor, (k,), (torch.int32, torch.int64))
            in_order = torch.arange(k, device=tensor.device) // self.group_size
            if not torch.equal(tensor.to(torch.int64), in_order):
                raise UnsupportedQuantization(
                    f"gptq: {name} reorders the groups (act-order), which is not supported"
                )
        else:
            super()._load(name, suffix, shard, tensor)

    def _fill_dummy(self, generator: torch.Generator) -> None:
        k, n = self.spec.in_features, self.spec.out_features
        device = self.qweight.device
        codes = torch.randint(0, 16, (k, n), generator=generator, device=device)
        self.qweight[:] = pack_rows(codes)
        self.zeros.fill_(DUMMY_ZERO)
        self.scales.fill_(DUMMY_SCALE)

    def forward(self, x: LinearInput) -> torch.Tensor:
        return self.gemms.int4_linear(
            dense_input(x), self.qweight, self.scales, self.zeros, self.group_size, self.bias
        )
