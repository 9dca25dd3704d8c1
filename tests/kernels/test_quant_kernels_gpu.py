"""The quantized paths on CUDA at Llama-3-8B and Qwen3-8B sizes, in bf16, against the torch
references: FP8 activation quantization (alone and fused, also as programmatic dependents),
torch._scaled_mm with rowwise scales, the W4A16 kernels (the decode GEMV, the tl.dot tiles, and
the dequantize + cuBLAS path of large batches), and the block-FP8 GEMM. The references run on
the same inputs; GEMMs are held to a relative error (their sums run in other orders),
quantization to the bit but for a few values one e4m3 step away where the fused kernel sums or
exponentiates in another order."""

import pytest
import torch

from llm_worker.kernels import quant_reference, reference
from llm_worker.kernels.block_fp8_gemm import block_fp8_matmul
from llm_worker.kernels.fp8_quant import quantize_fp8
from llm_worker.kernels.rms_norm import rms_norm_fp8
from llm_worker.kernels.silu_mul import silu_and_mul_fp8
from llm_worker.kernels.w4a16 import w4a16_matmul
from llm_worker.kernels.w4a16_config import W4A16Config
from llm_worker.models.quant.gemms import (
    INT4_DEQUANTIZE_MIN_TOKENS,
    scaled_mm_fp8_linear,
    triton_int4_linear,
)
from tests.kernels.test_fp8_quant import assert_fp8_close
from tests.kernels.test_quant_gemms import block_fp8_weights, int4_weights

pytestmark = pytest.mark.gpu
LLAMA3_8B = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]  # (K, N) per projection
QWEN3_8B = [(4096, 6144), (4096, 4096), (4096, 24576), (12288, 4096)]


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape and got.dtype == want.dtype
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("num_tokens", [1, 7, 300])
def test_fp8_activation_quantization(num_tokens: int, pdl: bool) -> None:
    x = torch.randn(num_tokens, 4096, device="cuda", dtype=torch.bfloat16)
    # Triton's fp32 division on the GPU is not correctly rounded (the interpreter's is), so a
    # value at an e4m3 midpoint now and then rounds the other way: one step, rarely
    assert_fp8_close(quantize_fp8(x, pdl=pdl), reference.quantize_fp8(x), max_off=1e-3)
    weight = (1 + 0.1 * torch.randn(4096, device="cuda")).bfloat16()
    residual = torch.randn_like(x)
    want, _ = reference.rms_norm_fp8(x, weight, 1e-5, residual.clone())
    got, _ = rms_norm_fp8(x, weight, 1e-5, residual.clone(), pdl=pdl)
    # a bf16 flip of a row's largest value moves its scale by a bf16 step, and its values with it
    assert_fp8_close(got, want, max_off=0.1, scale_rtol=1e-2)
    gate_up = torch.randn(num_tokens, 2 * 14336, device="cuda", dtype=torch.bfloat16)
    got = silu_and_mul_fp8(gate_up, pdl=pdl)
    assert_fp8_close(got, reference.silu_and_mul_fp8(gate_up), max_off=0.1, scale_rtol=1e-2)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m", [1, 16, 257])
@pytest.mark.parametrize(("k", "n"), LLAMA3_8B)
def test_scaled_mm_rowwise(k: int, n: int, m: int, with_bias: bool) -> None:
    a = reference.quantize_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    w, w_scale = reference.quantize_fp8(torch.randn(n, k, device="cuda") * 0.02)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) if with_bias else None
    want = quant_reference.fp8_linear(a, w, w_scale[:, 0], bias, torch.bfloat16)
    got = scaled_mm_fp8_linear(a, w, w_scale[:, 0].contiguous(), bias, torch.bfloat16)
    assert _relative_error(got, want) < 1e-2


@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("m", [1, 2, 5, 8, 16, 64, INT4_DEQUANTIZE_MIN_TOKENS, 1024])
@pytest.mark.parametrize(("k", "n"), LLAMA3_8B)
def test_w4a16(k: int, n: int, m: int, group: int) -> None:
    torch.manual_seed(0)
    qweight, scales, zeros = int4_weights(k, n, group)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    want = quant_reference.int4_linear(x, qweight, scales, zeros, group)
    assert _relative_error(triton_int4_linear(x, qweight, scales, zeros, group, None), want) < 1e-2
    assert _relative_error(w4a16_matmul(x, qweight, scales, zeros, group), want) < 1e-2


@pytest.mark.parametrize(
    "config",
    [
        W4A16Config(1, 256, 128, 4, num_warps=4, num_stages=1, gemv=True),
        W4A16Config(2, 128, 64, 16, num_warps=8, num_stages=3, gemv=True),
        W4A16Config(8, 64, 32, 32, num_warps=2, num_stages=2, gemv=True),
        W4A16Config(16, 64, 32, 8, num_warps=4, num_stages=4, gemv=True),
        W4A16Config(16, 64, 128, 8),
    ],
)
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize(("k", "n"), LLAMA3_8B)
def test_w4a16_configs(k: int, n: int, m: int, config: W4A16Config) -> None:
    """Configurations `bench_quant.py --sweep-w4a16` may pick, at every decode size; split K
    sums the same bits whichever program finishes last."""
    torch.manual_seed(0)
    qweight, scales, zeros = int4_weights(k, n, 128)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    want = quant_reference.int4_linear(x, qweight, scales, zeros, 128)
    got = w4a16_matmul(x, qweight, scales, zeros, 128, config)
    assert _relative_error(got, want) < 1e-2
    for _ in range(3):
        assert torch.equal(w4a16_matmul(x, qweight, scales, zeros, 128, config), got)


@pytest.mark.parametrize("m", [1, 16, 64, 300])
@pytest.mark.parametrize(("k", "n"), QWEN3_8B)
def test_block_fp8(k: int, n: int, m: int) -> None:
    torch.manual_seed(0)
    w, w_scale = block_fp8_weights(n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    want = quant_reference.block_fp8_linear(x, w, w_scale, (128, 128))
    assert _relative_error(block_fp8_matmul(x, w, w_scale), want) < 1e-2


def test_quantized_kernels_replay_in_a_cuda_graph() -> None:
    qweight, scales, zeros = int4_weights(4096, 4096, 128)
    w, w_scale = block_fp8_weights(4096, 4096)
    channel_scale = torch.rand(4096, device="cuda") * 1e-3
    x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)
    x_tile = torch.randn(32, 4096, device="cuda", dtype=torch.bfloat16)  # tl.dot, split K

    def step() -> tuple[torch.Tensor, ...]:
        fp8 = scaled_mm_fp8_linear(quantize_fp8(x), w, channel_scale, None, torch.bfloat16)
        int4 = (qweight, scales, zeros, 128)
        return (fp8, w4a16_matmul(x, *int4), w4a16_matmul(x_tile, *int4),
                block_fp8_matmul(x, w, w_scale))  # fmt: skip

    eager = step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    x.copy_(torch.randn_like(x))
    x_tile.copy_(torch.randn_like(x_tile))
    graph.replay()
    for got, want in zip(captured, step(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not all(torch.equal(a, b) for a, b in zip(eager, captured, strict=True))
