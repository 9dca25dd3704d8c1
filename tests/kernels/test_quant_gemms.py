"""The W4A16 and block-FP8 Triton GEMMs against their torch references (dequantize, then an
fp32 matmul), under the CPU interpreter at small sizes: fp32 and fp16 inputs (the interpreter
multiplies bf16 tiles as raw integers, so bf16 runs in the `gpu` module only).

Shapes take every edge a tile has: M of 1 and past a tile, N not a multiple of BLOCK_N, K
split across programs (split-K partial sums), groups of 32 to 128, and for block FP8 a K and an
N that end inside a 128 block. W4A16 runs both of its kernels, the tl.dot one and the GEMV.
"""

import pytest
import torch

from llm_worker.kernels import quant_reference
from llm_worker.kernels.block_fp8_gemm import BlockFp8Config, block_fp8_matmul
from llm_worker.kernels.fp8_format import FP8_DTYPE
from llm_worker.kernels.w4a16 import dequantize_int4, w4a16_matmul
from llm_worker.kernels.w4a16_config import GEMV_MAX_M, W4A16Config, choose_config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}  # relative to the output's largest value


def int4_weights(k: int, n: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random bits in every nibble (negative int32s too), zeros 0..16, positive scales."""
    qweight = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), dtype=torch.int32)
    scales = (torch.rand(k // group, n) * 0.02 + 1e-3).half()
    zeros = torch.randint(0, 17, (k // group, n), dtype=torch.uint8)
    return qweight.to(DEVICE), scales.to(DEVICE), zeros.to(DEVICE)


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    err = (got.float() - want.float()).abs().max().item()
    assert err <= TOLERANCE[dtype] * want.float().abs().max().item(), err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("m", "n", "k", "group", "config"),
    [
        (1, 72, 256, 128, None),
        (5, 96, 256, 64, W4A16Config(16, 32, 32, split_k=4)),
        (5, 40, 128, 32, W4A16Config(16, 64, 32, split_k=2)),
        (33, 64, 192, 64, W4A16Config(32, 32, 64, split_k=1)),
        (70, 48, 128, 128, W4A16Config(64, 32, 64, split_k=2)),
        # the GEMV: one row, a few, a full BLOCK_M, rows over several programs, K unsplit
        (1, 75, 256, 64, W4A16Config(1, 32, 64, split_k=4, gemv=True)),
        (3, 40, 384, 128, W4A16Config(4, 16, 32, split_k=3, gemv=True)),
        (8, 33, 256, 32, W4A16Config(8, 16, 32, split_k=8, gemv=True)),
        (5, 72, 128, 32, W4A16Config(2, 64, 32, split_k=2, gemv=True)),
        (3, 24, 256, 128, W4A16Config(4, 16, 128, split_k=1, gemv=True)),
    ],
)
def test_w4a16_matches_reference(
    m: int, n: int, k: int, group: int, config: W4A16Config | None, dtype: torch.dtype
) -> None:
    qweight, scales, zeros = int4_weights(k, n, group)
    wide = torch.randn(m, k + 8, device=DEVICE).to(dtype)
    x = wide[:, 4 : 4 + k]  # a strided row view
    want = quant_reference.int4_linear(x, qweight, scales, zeros, group)
    _assert_close(w4a16_matmul(x, qweight, scales, zeros, group, config), want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dequantize_int4_matches_reference(dtype: torch.dtype) -> None:
    qweight, scales, zeros = int4_weights(256, 72, 64)
    want = quant_reference.dequantize_int4(qweight, scales, zeros, 64).to(dtype)
    assert torch.equal(dequantize_int4(qweight, scales, zeros, 64, dtype), want)


@pytest.mark.parametrize("m", [1, 2, 5, GEMV_MAX_M, GEMV_MAX_M + 1, 64, 1024])
@pytest.mark.parametrize(("k", "n"), [(4096, 4096), (14336, 4096), (4096, 28672)])
def test_w4a16_config_tiles_k_and_fills_the_gpu_where_the_batch_is_small(
    k: int, n: int, m: int
) -> None:
    cfg = choose_config(m, n, k, 128, num_sms=132)
    assert cfg.gemv == (m <= GEMV_MAX_M)
    assert 128 % cfg.block_k == 0 and (k // cfg.block_k) % cfg.split_k == 0
    assert cfg.block_m >= (m if cfg.gemv else 16)
    programs = -(-m // cfg.block_m) * -(-n // cfg.block_n) * cfg.split_k
    if m <= 64:
        assert programs >= 132
    if m == 1024:
        assert cfg.split_k == 1


def test_w4a16_config_keeps_tiles_inside_small_groups() -> None:
    assert choose_config(1, 4096, 4096, 64, num_sms=132).block_k <= 64
    assert choose_config(1, 4096, 4096, 32, num_sms=132).block_k == 32
    assert choose_config(32, 4096, 4096, 64, num_sms=132).block_k == 64


@pytest.mark.parametrize(
    "config",
    [
        W4A16Config(16, 16, 128, 1),  # a K tile across groups
        W4A16Config(16, 16, 32, 3),  # 8 K tiles in 3 splits
        W4A16Config(2, 24, 32, 1, gemv=True),  # not a power of two
        W4A16Config(8, 16, 32, 1),  # too few rows for tl.dot
    ],
)
def test_w4a16_refuses_configs_that_do_not_tile(config: W4A16Config) -> None:
    qweight, scales, zeros = int4_weights(256, 16, 64)
    x = torch.randn(2, 256, device=DEVICE)
    with pytest.raises(ValueError, match=r"tile|power of two|block_m"):
        w4a16_matmul(x, qweight, scales, zeros, 64, config)


def block_fp8_weights(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = (torch.randn(n, k) * 64).clamp(-448, 448).to(FP8_DTYPE)
    scale = torch.rand(-(-n // 128), -(-k // 128)) * 1e-3 + 1e-4
    return w.to(DEVICE), scale.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("m", "n", "k", "config"),
    [
        (1, 256, 256, None),
        (5, 200, 300, BlockFp8Config(16, 32)),
        (19, 136, 128, BlockFp8Config(16, 64)),
    ],
)
def test_block_fp8_matches_reference(
    m: int, n: int, k: int, config: BlockFp8Config | None, dtype: torch.dtype
) -> None:
    w, w_scale = block_fp8_weights(n, k)
    x = torch.randn(m, k, device=DEVICE).to(dtype) * torch.logspace(-2, 2, m, device=DEVICE)[
        :, None
    ].to(dtype)
    want = quant_reference.block_fp8_linear(x, w, w_scale, (128, 128))
    _assert_close(block_fp8_matmul(x, w, w_scale, (128, 128), config), want, dtype)


def test_block_fp8_reference_quantizes_each_group_on_its_own() -> None:
    """A group of huge values next to one of small ones: the small group keeps its precision,
    which one scale per token would round away."""
    x = torch.cat([torch.full((1, 128), 1e4), torch.linspace(-1, 1, 128)[None]], dim=1)
    data, scale = quant_reference.quantize_fp8_groups(x, 128)
    assert scale.shape == (1, 2)
    dequantized = data.float() * scale.repeat_interleave(128, 1)
    torch.testing.assert_close(dequantized[0, 128:], x[0, 128:], rtol=2**-4, atol=1e-3)
