"""The split-K merge against a torch log-sum-exp merge of the same partial states."""

import pytest
import torch

from llm_worker.kernels.merge_splits import merge_splits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dim", [32, 128])  # 128: 8 rows, so four programs split each row
def test_merge_matches_torch_and_zeroes_padding_whatever_its_partials_hold(dim: int) -> None:
    """Real rows are the exact softmax merge, empty splits (m = -inf, l = 0) included; padding
    rows, whose partials no split wrote, come out as zeros even when those hold NaN or inf."""
    gen = torch.Generator().manual_seed(3)
    splits, tokens, real, heads = 5, 4, 3, 2
    acc = torch.randn(splits, tokens, heads, dim, generator=gen)
    m = torch.randn(splits, tokens, heads, generator=gen) * 4
    l_sum = torch.rand(splits, tokens, heads, generator=gen) + 0.5
    m[1, 0], l_sum[1, 0], acc[1, 0] = float("-inf"), 0.0, 0.0  # an empty split of token 0
    acc[:, real:], m[:, real:], l_sum[:, real:] = float("nan"), float("inf"), float("nan")
    out = torch.empty(tokens, heads, dim, dtype=torch.float16, device=DEVICE)
    num_real = torch.tensor([real], dtype=torch.int32, device=DEVICE)
    merge_splits(out, acc.to(DEVICE), m.to(DEVICE), l_sum.to(DEVICE), num_real)

    m_max = m[:, :real].amax(0)
    weight = torch.exp2(m[:, :real] - m_max)
    expected = (weight[..., None] * acc[:, :real]).sum(0) / (weight * l_sum[:, :real]).sum(0)[
        ..., None
    ]
    torch.testing.assert_close(out[:real].float().cpu(), expected, atol=2e-3, rtol=2e-3)
    assert torch.all(out[real:].cpu() == 0)
