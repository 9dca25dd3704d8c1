"""The sampler against closed-form expectations."""

import math

import torch

from llm_worker.engine.sampler import SamplingRow, sample
from llm_worker.schemas import SamplingParams


def _row(**kw: object) -> SamplingRow:
    return SamplingRow(
        params=SamplingParams(**kw),
        token_ids=[1, 2],
        num_prompt_tokens=2,  # type: ignore[arg-type]
        generator=None,
    )


def test_greedy_top_k1_and_tiny_top_p_pick_the_argmax() -> None:
    logits = torch.tensor([[0.1, 2.0, 1.9, -1.0]]).repeat(3, 1)
    rows = [_row(temperature=0), _row(temperature=1.0, top_k=1), _row(temperature=1.0, top_p=0.01)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert [t.token_id for t in sample(logits, rows, gen)] == [1, 1, 1]


def test_sampled_frequencies_follow_the_filtered_softmax() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    n = 4000
    gen = torch.Generator().manual_seed(1)
    counts = [0, 0, 0, 0]
    rows = [_row(temperature=1.0, top_k=3)]
    for _ in range(n):
        counts[sample(logits, rows, gen)[0].token_id] += 1
    expected = [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]
    assert counts[3] == 0
    chi2 = sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts[:3], expected[:3], strict=True))
    assert chi2 < 13.8  # chi-square, 2 dof, p = 0.001


def test_min_p_drops_tokens_below_the_fraction_of_the_top() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    gen = torch.Generator().manual_seed(2)
    drawn = {sample(logits, [_row(min_p=0.4)], gen)[0].token_id for _ in range(300)}
    assert drawn == {0, 1}


def test_seeded_rows_ignore_the_shared_generator() -> None:
    logits = torch.zeros(2, 50)
    row = SamplingRow(
        params=SamplingParams(seed=5),
        token_ids=[1],
        num_prompt_tokens=1,
        generator=torch.Generator().manual_seed(5),
    )
    again = SamplingRow(
        params=SamplingParams(seed=5),
        token_ids=[1],
        num_prompt_tokens=1,
        generator=torch.Generator().manual_seed(5),
    )
    a = sample(logits, [row, _row()], torch.Generator().manual_seed(1))[0].token_id
    b = sample(logits, [_row(), again], torch.Generator().manual_seed(2))[1].token_id
    assert a == b


def test_logprob_of_the_sampled_token() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    [tok] = sample(logits, [_row(temperature=0, logprobs=2)], None)
    expected = 3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert tok.token_id == 2 and abs(tok.logprob - expected) < 1e-5
    assert tok.top_logprobs is not None and list(tok.top_logprobs) == [2, 1]
