"""Fused RMSNorm, rotary and SiLU*mul against their torch references.

Without CUDA they run under the interpreter at small sizes. fp32 and fp16 agree to the last bit
but for the order of the norm's sum of squares. bf16 is held to about one bf16 step there: the
interpreter (triton 3.9) casts fp32 to bf16 by truncation where the GPU rounds to nearest even.
The `gpu` tests repeat the cases at Llama-3-8B sizes and hold bf16 to the bit where the kernel
does the reference's arithmetic op for op.
"""

import pytest
import torch

from llm_worker.kernels import reference
from llm_worker.kernels.rms_norm import rms_norm
from llm_worker.kernels.rotary import rotary_embedding
from llm_worker.kernels.silu_mul import silu_and_mul
from llm_worker.models.layers import rotary_cos_sin_cache

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {
    torch.float32: {"rtol": 2e-6, "atol": 2e-6},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
    # Four bf16 steps: the norm casts three times in a row, each truncating under the interpreter.
    torch.bfloat16: {"rtol": 3.2e-2, "atol": 1e-3},
}
# Shares of 16-bit outputs allowed to differ on CUDA. Rotary and the residual sum do the
# reference's arithmetic op for op: none. The norm sums its squares in another order; SiLU's
# libdevice exp should be the expf torch calls, but no GPU here has confirmed it.
NORM_FLIPS, SILU_FLIPS = 0.01, 0.001


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _randn(*shape: int, dtype: torch.dtype, device: str = DEVICE) -> torch.Tensor:
    return torch.randn(*shape, device=device).to(dtype)


def _assert_close(got: torch.Tensor, want: torch.Tensor, max_flips: float = 0.0) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.is_cuda and got.dtype != torch.float32:
        flipped = (got != want).float().mean().item()
        assert flipped <= max_flips, f"{flipped:.2%} of the outputs differ"
    torch.testing.assert_close(got, want, **TOLERANCE[got.dtype])


def _qkv_views(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype):
    """q, k, v as the model gets them: views of one [num_tokens, (q + 2 kv) * head_dim] output."""
    qkv = _randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim],
                        dim=-1)  # fmt: skip
    return (q.view(num_tokens, num_heads, head_dim), k.view(num_tokens, num_kv_heads, head_dim),
            v.view(num_tokens, num_kv_heads, head_dim))  # fmt: skip


def check_rms_norm(num_tokens: int, hidden: int, dtype: torch.dtype, with_residual: bool) -> None:
    wide = _randn(num_tokens, hidden + 8, dtype=dtype)
    x = wide[:, 3 : 3 + hidden]  # a strided row view
    weight = _randn(hidden, dtype=dtype)
    residual = _randn(num_tokens, hidden, dtype=dtype) if with_residual else None
    want_out, want_residual = reference.rms_norm(x, weight, 1e-5, residual)
    before = wide.clone()
    got_out, got_residual = rms_norm(x, weight, 1e-5, None if residual is None else residual)
    _assert_close(got_out, want_out, NORM_FLIPS)
    _assert_close(got_residual, want_residual)
    assert torch.equal(wide, before)  # x is read only
    if residual is None:
        assert got_residual is x
    else:
        assert got_residual is residual  # the sum is written into the residual in place


def check_qk_norm(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype):
    q, k, _ = _qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype)
    weight = _randn(head_dim, dtype=dtype)
    for rows in (q, k):
        want, _ = reference.rms_norm(rows, weight, 1e-6)
        got, same = rms_norm(rows, weight, 1e-6)
        assert same is rows and got.is_contiguous()
        _assert_close(got, want, NORM_FLIPS)


def check_rotary(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype):
    q, k, v = _qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype)
    max_position = 4 * num_tokens + 16
    cache = rotary_cos_sin_cache(head_dim, max_position, 500000.0, None, torch.device(DEVICE))
    positions = torch.randint(0, max_position, (num_tokens,), device=DEVICE)
    want_q, want_k = reference.rotary_embedding(positions, q, k, cache)
    v_before = v.clone()
    got_q, got_k = rotary_embedding(positions, q, k, cache)
    assert got_q is q and got_k is k  # rotated in place
    _assert_close(got_q, want_q)
    _assert_close(got_k, want_k)
    assert torch.equal(v, v_before)


def check_silu_and_mul(num_tokens: int, intermediate: int, dtype: torch.dtype) -> None:
    gate_up = _randn(num_tokens, 2 * intermediate + 6, dtype=dtype)[:, : 2 * intermediate]
    _assert_close(silu_and_mul(gate_up), reference.silu_and_mul(gate_up), SILU_FLIPS)


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("hidden", [64, 200])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype: torch.dtype, hidden: int, with_residual: bool) -> None:
    check_rms_norm(7, hidden, dtype, with_residual)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_head_norm_of_strided_q_and_k(dtype: torch.dtype, head_dim: int) -> None:
    check_qk_norm(5, 6, 2, head_dim, dtype)


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (6, 2), (5, 1)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary(dtype: torch.dtype, head_dim: int, num_heads: int, num_kv_heads: int) -> None:
    check_rotary(5, num_heads, num_kv_heads, head_dim, dtype)


@pytest.mark.parametrize("intermediate", [96, 1100])
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype: torch.dtype, intermediate: int) -> None:
    check_silu_and_mul(3, intermediate, dtype)


def test_no_tokens() -> None:
    x = torch.empty(0, 64, device=DEVICE)
    out, residual = rms_norm(x, torch.ones(64, device=DEVICE), 1e-6, x.clone())
    assert out.shape == (0, 64) and residual.shape == (0, 64)
    q, k, _ = _qkv_views(0, 4, 2, 64, torch.float32)
    cache = rotary_cos_sin_cache(64, 8, 10000.0, None, torch.device(DEVICE))
    rotary_embedding(torch.empty(0, dtype=torch.int64, device=DEVICE), q, k, cache)
    assert silu_and_mul(torch.empty(0, 64, device=DEVICE)).shape == (0, 32)


def test_launchers_reject_bad_inputs() -> None:
    x = torch.randn(3, 64, device=DEVICE)
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm(x, torch.ones(32, device=DEVICE), 1e-6)
    with pytest.raises(ValueError, match="residual must match"):
        rms_norm(x, torch.ones(64, device=DEVICE), 1e-6, x.half())
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm(x.t(), torch.ones(3, device=DEVICE), 1e-6)
    q, k, _ = _qkv_views(3, 4, 2, 64, torch.float32)
    cache = rotary_cos_sin_cache(64, 8, 10000.0, None, torch.device(DEVICE))
    positions = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="positions must be int64"):
        rotary_embedding(positions.int(), q, k, cache)
    with pytest.raises(ValueError, match="contiguous in head_dim"):
        rotary_embedding(positions, torch.randn(3, 64, 4, device=DEVICE).transpose(1, 2), k, cache)
    with pytest.raises(ValueError, match="share an even head_dim"):
        rotary_embedding(positions, q, k, cache[:, :32])
    with pytest.raises(ValueError, match="gate_up must be"):
        silu_and_mul(torch.randn(3, 7, device=DEVICE))


# The same checks at Llama-3-8B sizes: hidden 4096, 32 / 8 heads of 128, intermediate 14336.
LLAMA3_TOKENS = [1, 257, 2048]


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", LLAMA3_TOKENS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_llama3_sizes(dtype: torch.dtype, num_tokens: int) -> None:
    for with_residual in (False, True):
        check_rms_norm(num_tokens, 4096, dtype, with_residual)
    check_qk_norm(num_tokens, 32, 8, 128, dtype)
    check_rotary(num_tokens, 32, 8, 128, dtype)
    check_rotary(num_tokens, 16, 8, 64, dtype)
    check_silu_and_mul(num_tokens, 14336, dtype)


@pytest.mark.gpu
def test_gpu_fused_ops_replay_from_a_cuda_graph() -> None:
    num_tokens, dtype = 64, torch.bfloat16
    h, residual = _randn(num_tokens, 4096, dtype=dtype), _randn(num_tokens, 4096, dtype=dtype)
    weight = _randn(4096, dtype=dtype)
    q, k, _ = _qkv_views(num_tokens, 32, 8, 128, dtype)
    cache = rotary_cos_sin_cache(128, 4096, 500000.0, None, torch.device(DEVICE))
    positions = torch.randint(0, 4096, (num_tokens,), device=DEVICE)
    gate_up = _randn(num_tokens, 2 * 14336, dtype=dtype)

    def step() -> tuple[torch.Tensor, ...]:
        out, _ = rms_norm(h, weight, 1e-5, residual.clone())
        rotated = rotary_embedding(positions, q.clone(), k.clone(), cache)
        return out, *rotated, silu_and_mul(gate_up)

    step()  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    for t in (h, residual, q, k, gate_up):
        t.normal_()
    positions.random_(0, 4096)
    graph.replay()
    want = (
        reference.rms_norm(h, weight, 1e-5, residual)[0],
        *reference.rotary_embedding(positions, q, k, cache),
        reference.silu_and_mul(gate_up),
    )
    flips = (NORM_FLIPS, 0.0, 0.0, SILU_FLIPS)
    for got, expected, max_flips in zip(outputs, want, flips, strict=True):
        _assert_close(got, expected, max_flips)
