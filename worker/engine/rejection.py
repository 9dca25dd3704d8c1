"""Verification of draft tokens: rejection sampling that leaves the target's distribution intact.

For draft token x at position j, with q the draft's distribution and p the target's (both after
temperature, top-k, top-p and min-p), x is kept with probability min(1, p(x) / q(x)). At the first
rejection the token is drawn from max(0, p - q) renormalised instead, and the rest is dropped;
when every draft is kept a bonus token is drawn from the target at the last position. The result
is distributed exactly as tokens drawn from p one at a time (Leviathan et al., 2023; Chen et al.,
2023). A proposer without a distribution (n-gram) is a point mass at x: q(x) = 1.

Greedy rows are one-hot at the target's argmax, which makes all of this prefix matching: keep
drafts while they equal the argmax, then emit the argmax. Penalties and min_tokens' blocked
tokens are applied to each position's logits first, with the drafts before it as history.
"""

from dataclasses import dataclass

import torch

from llm_worker.engine.sampler import (
    SamplingRow,
    draw,
    filtered_probs,
    processed_logits,
    uniform,
    with_logprobs,
)
from llm_worker.engine.sequence import SampledToken


@dataclass
class VerifyItem:
    # k + 1 rows: position j's history includes drafts[:j], so penalties and min_tokens apply
    # at each position exactly as they would one token at a time.
    rows: list[SamplingRow]
    draft_token_ids: list[int]
    # [k, vocab]: the distribution each draft was drawn from; None: point masses.
    draft_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        assert len(self.rows) == len(self.draft_token_ids) + 1


def verify(
    target_logits: torch.Tensor,  # [sum(k_i + 1), vocab] fp32: rows of item i, then item i + 1
    items: list[VerifyItem],
    generator: torch.Generator | None,
) -> list[list[SampledToken]]:
    """The tokens each item emits this step: its kept drafts and one more (1 to k + 1 tokens)."""
    sizes = [len(item.draft_token_ids) + 1 for item in items]
    assert target_logits.shape[0] == sum(sizes)
    row_of = [row for item in items for row in item.rows]
    logits = processed_logits(target_logits, row_of)
    if all(r.params.is_greedy and r.params.logprobs is None for r in row_of):
        # Prefix matching needs only the argmax: no softmax, one read-back.
        best = logits.argmax(dim=-1).tolist()
        return [[SampledToken(t) for t in tokens] for tokens in _prefix_match(items, sizes, best)]
    device = target_logits.device
    p = filtered_probs(logits, row_of)
    first_rows = [sum(sizes[:i]) for i in range(len(items))]
    draft_rows = [first + j for first, item in zip(first_rows, items, strict=True)
                  for j in range(len(item.draft_token_ids))]  # fmt: skip
    drafts = torch.tensor(
        [t for item in items for t in item.draft_token_ids], dtype=torch.long, device=device
    )
    q = torch.zeros_like(p)  # point masses unless the item brought its distribution
    if draft_rows:
        q[draft_rows, drafts] = 1.0
        for first, item in zip(first_rows, items, strict=True):
            if item.draft_probs is not None and item.draft_token_ids:
                q[first : first + len(item.draft_token_ids)] = item.draft_probs
    # Kept when u < p(x) / q(x); q(x) > 0 because x was drawn from q.
    p_x = p[draft_rows, drafts]
    q_x = q[draft_rows, drafts]
    draft_row_params = [row_of[r] for r in draft_rows]
    u = uniform(len(draft_rows), draft_row_params, generator, device)
    kept = (u * q_x < p_x).tolist()
    residual = (p - q).clamp_(min=0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    # A row where p == q is never rejected; give it p so the division stays finite.
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p)
    drawn = draw(residual, row_of, generator).tolist()
    out: list[list[SampledToken]] = []
    kept_iter = iter(kept)
    for first, item in zip(first_rows, items, strict=True):
        row_kept = [next(kept_iter) for _ in item.draft_token_ids]
        n_kept = row_kept.index(False) if False in row_kept else len(row_kept)
        tokens = [*item.draft_token_ids[:n_kept], drawn[first + n_kept]]
        out.append(_tokens_with_logprobs(target_logits, first, item.rows, tokens))
    return out


def _prefix_match(items: list[VerifyItem], sizes: list[int], best: list[int]) -> list[list[int]]:
    out, first = [], 0
    for item, size in zip(items, sizes, strict=True):
        targets, drafts = best[first : first + size], item.draft_token_ids
        n_kept = 0
        while n_kept < len(drafts) and drafts[n_kept] == targets[n_kept]:
            n_kept += 1
        out.append([*drafts[:n_kept], targets[n_kept]])
        first += size
    return out


def _tokens_with_logprobs(
    logits: torch.Tensor, first: int, rows: list[SamplingRow], tokens: list[int]
) -> list[SampledToken]:
    if rows[0].params.logprobs is None:
        return [SampledToken(t) for t in tokens]
    return with_logprobs(logits[first : first + len(tokens)], rows[: len(tokens)], tokens)
