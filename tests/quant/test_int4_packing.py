"""4-bit packing (hypothesis): the worker's unpackers read what the formats' own packing writes
(tests/quant/formats.py packs as AutoAWQ and GPTQ do), its packers invert them, and
round-to-nearest quantization stays within half a step of each weight it does not clip."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_worker.kernels.quant_reference import unpack_int4_rows
from llm_worker.models.quant.int4_packing import (
    AWQ_ORDER,
    pack_columns,
    pack_rows,
    rtn_int4,
    unpack_columns,
)
from tests.quant.formats import AWQ_PACK_ORDER, _pack_nibbles

shapes = st.tuples(st.integers(1, 5), st.integers(1, 4)).map(lambda s: (s[0], 8 * s[1]))


def _codes(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 16, shape)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_awq_columns(shape: tuple[int, int], seed: int) -> None:
    codes = _codes(shape, seed)
    packed = _pack_nibbles(codes, AWQ_PACK_ORDER)
    assert tuple(AWQ_ORDER) == tuple(AWQ_PACK_ORDER)
    assert torch.equal(unpack_columns(packed, AWQ_ORDER), torch.from_numpy(codes).int())
    assert torch.equal(pack_columns(torch.from_numpy(codes), AWQ_ORDER), packed)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_gptq_rows_and_zero_columns(shape: tuple[int, int], seed: int) -> None:
    codes = _codes((shape[1], shape[0] * 8), seed)  # [K, N] with K a multiple of 8
    packed_rows = _pack_nibbles(codes.T.copy()).T.contiguous()
    assert torch.equal(pack_rows(torch.from_numpy(codes)), packed_rows)
    assert torch.equal(unpack_int4_rows(packed_rows), torch.from_numpy(codes).int())
    zeros = _codes(shape, seed + 1)
    assert torch.equal(unpack_columns(_pack_nibbles(zeros)), torch.from_numpy(zeros).int())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), num_groups=st.integers(1, 3), spread=st.floats(1e-3, 10))
def test_rtn_int4_within_half_a_step(seed: int, num_groups: int, spread: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(16, 32 * num_groups, generator=gen) * spread
    q, zeros, scales = rtn_int4(weight, 32)
    assert q.min() >= 0 and q.max() <= 15 and zeros.min() >= 0 and zeros.max() <= 15
    group = torch.arange(weight.shape[1]) // 32
    dequantized = ((q - zeros[group]).float() * scales[group].float()).T
    step, error = scales[group].float().T, (dequantized - weight).abs()
    slack = 1e-6 * spread
    inside = ((q > 0) & (q < 15)).T  # not clipped at the ends of the 4-bit range
    assert (error[inside] <= step[inside] / 2 + slack).all()
    # The zero point is rounded too, so a group's extremes may clip by up to half a step more.
    assert (error <= step + slack).all()
