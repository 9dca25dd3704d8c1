"""FP8 activation quantization (alone, fused into RMSNorm, fused into SiLU*mul) against the torch
references, under the CPU interpreter; the `gpu` module repeats them at model sizes.

The reference itself is checked against torch's own e4m3 cast and against compressed-tensors'
quantize (the format FP8 checkpoints are written in). fp32 inputs match the reference to the
bit, or where the fused kernel sums or exponentiates in another order than torch, in all but a
rare value one e4m3 step away. bf16 is held to one e4m3 step: the interpreter casts fp32 to
bf16 by truncation, so the value quantized may be one bf16 step off the reference's.
"""

import pytest
import torch

from llm_worker.kernels import reference
from llm_worker.kernels.fp8_format import FP8_DTYPE, FP8_MAX, Fp8Activation
from llm_worker.kernels.fp8_quant import quantize_fp8
from llm_worker.kernels.rms_norm import rms_norm_fp8
from llm_worker.kernels.silu_mul import silu_and_mul_fp8

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
E4M3_STEP = 2**-3  # relative spacing of e4m3 numbers (3 mantissa bits)


def e4m3_grid() -> torch.Tensor:
    """Every finite e4m3 value, each midpoint between neighbours and points just off them."""
    values = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    values = values[values.isfinite()].unique().sort().values
    mids = (values[1:] + values[:-1]) / 2
    return torch.cat([values, mids, mids * (1 + 1e-3), mids * (1 - 1e-3), -mids, -values])


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def assert_fp8_close(
    got: Fp8Activation, want: Fp8Activation, max_off: float = 0.0, scale_rtol: float = 2e-6
) -> None:
    """Scales agree to `scale_rtol`; values bit for bit but for a share `max_off` that may sit
    one e4m3 step (of the larger of the two) away."""
    assert got.data.dtype == FP8_DTYPE and got.scale.dtype == torch.float32
    assert got.data.shape == want.data.shape and got.scale.shape == want.scale.shape
    torch.testing.assert_close(got.scale, want.scale, rtol=scale_rtol, atol=0)
    got_values, want_values = got.data.float(), want.data.float()
    off = _bits(got.data) != _bits(want.data)
    assert off.float().mean().item() <= max_off, f"{off.float().mean():.2%} differ"
    step = torch.maximum(got_values.abs(), want_values.abs()) * E4M3_STEP + 2**-9
    assert ((got_values - want_values).abs() <= step).all()


def test_reference_rounds_as_torch_and_compressed_tensors() -> None:
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize

    x = torch.randn(6, 300) * torch.logspace(-3, 3, 6)[:, None]
    got = reference.quantize_fp8(x)
    want_scale = x.abs().amax(1, keepdim=True) / FP8_MAX
    torch.testing.assert_close(got.scale, want_scale, rtol=0, atol=0)
    args = QuantizationArgs(num_bits=8, type="float", strategy="token", dynamic=True)
    want = quantize(x, want_scale, None, args, dtype=FP8_DTYPE)
    assert torch.equal(_bits(got.data), _bits(want))


def test_interpreter_safe_rounding_hits_every_e4m3_value() -> None:
    x = e4m3_grid().to(DEVICE)[None, :]  # one row: scale 448 / 448 = 1, values as they are
    got, want = quantize_fp8(x), reference.quantize_fp8(x)
    assert got.scale.item() == 1.0
    assert torch.equal(_bits(got.data), _bits(want.data))


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(share of values off by a step, scale rtol) for a fused kernel: its sums and exp differ
    from torch's in the last bits, which in bf16 can move a row's largest value (and so its
    scale) by a bf16 step or two; the interpreter truncates to bf16, which moves them more."""
    if dtype == torch.float32:
        return 0.01, 2e-6
    return 0.1, 2e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_quantize_fp8(dtype: torch.dtype, static: bool) -> None:
    wide = torch.randn(7, 230, device=DEVICE).to(dtype)
    x = wide[:, 5:205]  # a strided row view
    x[3] = 0  # a zero row still gets a positive scale
    scale = torch.tensor([0.004], device=DEVICE) if static else None
    got, want = quantize_fp8(x, scale), reference.quantize_fp8(x, scale)
    assert_fp8_close(got, want)
    assert (got.scale > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_rms_norm_fp8(dtype: torch.dtype, with_residual: bool, static: bool) -> None:
    x = torch.randn(9, 384, device=DEVICE).to(dtype)
    weight = (1 + 0.1 * torch.randn(384, device=DEVICE)).to(dtype)
    residual = torch.randn(9, 384, device=DEVICE).to(dtype) if with_residual else None
    scale = torch.tensor([0.02], device=DEVICE) if static else None
    want, want_residual = reference.rms_norm_fp8(x, weight, 1e-5, residual, scale)
    given = None if residual is None else residual.clone()
    got, got_residual = rms_norm_fp8(x, weight, 1e-5, given, scale)
    assert_fp8_close(got, want, *_tolerance(dtype))
    torch.testing.assert_close(got_residual, want_residual, rtol=1e-2, atol=1e-2)
    if given is not None:
        assert got_residual is given  # the sum goes into the residual in place


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_silu_and_mul_fp8(dtype: torch.dtype, static: bool) -> None:
    wide = torch.randn(6, 2 * 700 + 4, device=DEVICE).to(dtype)
    gate_up = wide[:, : 2 * 700]
    scale = torch.tensor([0.01], device=DEVICE) if static else None
    got, want = silu_and_mul_fp8(gate_up, scale), reference.silu_and_mul_fp8(gate_up, scale)
    assert_fp8_close(got, want, *_tolerance(dtype))


def test_launchers_refuse_bad_inputs() -> None:
    with pytest.raises(ValueError, match="static_scale"):
        quantize_fp8(torch.randn(2, 16, device=DEVICE), torch.tensor([1.0, 2.0], device=DEVICE))
    with pytest.raises(ValueError, match=r"\[num_tokens, hidden\]"):
        rms_norm_fp8(torch.randn(2, 3, 16, device=DEVICE), torch.ones(16, device=DEVICE), 1e-6)
    empty = quantize_fp8(torch.randn(0, 16, device=DEVICE))
    assert empty.data.shape == (0, 16) and empty.scale.shape == (0, 1)
