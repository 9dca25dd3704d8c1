"""Token selection for one step: penalties, min_tokens, temperature, top-k/p, min-p, seeds.

Work is vectorised over the batch; a per-row Python loop only runs for rows that ask for
penalties, min_tokens or a seed (a seeded row draws from its own generator, so its tokens do not
depend on what else shares the batch). Whatever changes a row's logits before it is sampled
(penalties, blocked tokens) is applied in one place, `processed_logits`, which plain sampling
and draft verification share; `alters_logits` says which rows need it.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm_worker.engine.sequence import SampledToken
from llm_worker.schemas import SamplingParams

NEG_INF = float("-inf")


@dataclass
class SamplingRow:
    params: SamplingParams
    token_ids: list[int]  # prompt followed by output so far
    num_prompt_tokens: int
    generator: torch.Generator | None  # set for seeded requests
    blocked_token_ids: tuple[int, ...] = ()  # eos/stop ids while under min_tokens


def _apply_penalties(logits: torch.Tensor, row: SamplingRow) -> None:  # logits: [V], in place
    p = row.params
    vocab = logits.shape[0]
    device = logits.device
    output = torch.tensor(row.token_ids[row.num_prompt_tokens :], dtype=torch.long, device=device)
    counts = torch.bincount(output, minlength=vocab)[:vocab].to(logits.dtype)
    if p.repetition_penalty != 1.0:
        seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        seen[torch.tensor(row.token_ids, dtype=torch.long, device=device)] = True
        penalized = torch.where(
            logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty
        )
        logits.copy_(torch.where(seen, penalized, logits))
    if p.frequency_penalty != 0.0:
        logits -= p.frequency_penalty * counts
    if p.presence_penalty != 0.0:
        logits -= p.presence_penalty * (counts > 0).to(logits.dtype)


def _top_k_top_p_min_p(probs: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Zero out what each row's filters drop; probs: [n, V] rows summing to 1."""
    device = probs.device
    top_k = device_tensor(
        [r.params.top_k if r.params.top_k > 0 else probs.shape[1] for r in rows], device
    )
    top_p = device_tensor([r.params.top_p for r in rows], device, probs.dtype)
    min_p = device_tensor([r.params.min_p for r in rows], device, probs.dtype)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(probs.shape[1], device=device)[None, :]
    cumulative = sorted_probs.cumsum(dim=-1)
    # Keep a token if it is within top-k and the mass before it is under top-p.
    keep = (ranks < top_k[:, None]) & ((cumulative - sorted_probs) < top_p[:, None])
    keep &= sorted_probs >= min_p[:, None] * sorted_probs[:, :1]
    keep[:, 0] = True
    filtered = torch.zeros_like(probs).scatter_(1, order, sorted_probs * keep)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def alters_logits(row: SamplingRow) -> bool:
    """Whether `processed_logits` changes this row."""
    return row.params.needs_penalties or bool(row.blocked_token_ids)


def _plain_greedy(row: SamplingRow) -> bool:
    """Greedy, no logprobs, and not alters_logits (spelt out: it runs for every row of every
    step)."""
    p = row.params
    return (
        p.is_greedy and not p.needs_penalties and not row.blocked_token_ids and p.logprobs is None
    )


def device_tensor(
    values: list[Any] | np.ndarray, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A small host list or array on the device without a stream sync: a plain
    `torch.tensor(..., device=cuda)` waits for every kernel queued before it, which would stall
    async scheduling."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def needs_host_history(row: SamplingRow) -> bool:
    """Rows that read the sequence's tokens or report logprobs: they cannot be sampled while
    the previous token is still on the device (async scheduling)."""
    return row.params.needs_penalties or row.params.logprobs is not None


def sample_ids(
    logits: torch.Tensor,  # [n, vocab] fp32, one row per sequence that samples this step
    rows: list[SamplingRow],
    generator: torch.Generator | None,
) -> torch.Tensor:  # [n] int64 on the logits' device; nothing read back
    assert logits.shape[0] == len(rows)
    if all(_plain_greedy(r) for r in rows):  # the common case: one argmax
        return logits.argmax(dim=-1)
    logits = processed_logits(logits, rows)
    chosen = logits.argmax(dim=-1)
    if not all(r.params.is_greedy for r in rows):  # decided on the host: no device sync
        greedy = device_tensor([r.params.is_greedy for r in rows], logits.device)
        drawn = draw(_tempered_probs(logits, rows), rows, generator)
        chosen = torch.where(greedy, chosen, drawn)
    return chosen


def sample(
    logits: torch.Tensor,  # [n, vocab] fp32, one row per sequence that samples this step
    rows: list[SamplingRow],
    generator: torch.Generator | None,
) -> list[SampledToken]:
    token_ids = sample_ids(logits, rows, generator).tolist()
    return with_logprobs(logits, rows, token_ids)


def processed_logits(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """A copy with each row's penalties applied and its blocked tokens (min_tokens) at -inf;
    `logits` itself when no row asks for either."""
    if not any(map(alters_logits, rows)):
        return logits
    logits = logits.clone()
    for i, row in enumerate(rows):
        if row.params.needs_penalties:
            _apply_penalties(logits[i], row)
        if row.blocked_token_ids:
            logits[i, device_tensor(list(row.blocked_token_ids), logits.device)] = NEG_INF
    return logits


def _tempered_probs(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Softmax at each row's temperature (1 for greedy rows), then its top-k/top-p/min-p."""
    temperature = device_tensor(
        [r.params.temperature if not r.params.is_greedy else 1.0 for r in rows],
        logits.device,
        logits.dtype,
    )
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    if any(r.params.top_k > 0 or r.params.top_p < 1.0 or r.params.min_p > 0 for r in rows):
        probs = _top_k_top_p_min_p(probs, rows)
    return probs


def filtered_probs(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The distribution each row's token is drawn from: one-hot at the argmax for greedy rows.

    Speculative decoding applies it to both the draft's and the target's logits, so that
    rejection sampling keeps exactly what sample() would have drawn from.
    """
    probs = _tempered_probs(logits, rows)
    greedy = [i for i, r in enumerate(rows) if r.params.is_greedy]
    if greedy:
        rows_idx = torch.tensor(greedy, device=logits.device)
        one_hot = torch.zeros_like(probs[rows_idx])
        one_hot.scatter_(1, logits[rows_idx].argmax(dim=-1, keepdim=True), 1.0)
        probs[rows_idx] = one_hot
    return probs


def draw(
    probs: torch.Tensor, rows: list[SamplingRow], generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row from `probs` [n, V]; seeded rows use their own generator."""
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, one generator per row.
    noise = torch.empty_like(probs).exponential_(generator=generator)
    for i, row in enumerate(rows):
        if row.generator is not None:
            noise[i].exponential_(generator=row.generator)
    return (probs / noise).argmax(dim=-1)


def uniform(
    n: int, rows: list[SamplingRow], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """One U[0, 1) per row; seeded rows use their own generator."""
    values = torch.rand(n, generator=generator, device=device)
    for i, row in enumerate(rows):
        if row.generator is not None:
            values[i] = torch.rand(1, generator=row.generator, device=device)[0]
    return values


def with_logprobs(
    raw_logits: torch.Tensor, rows: list[SamplingRow], token_ids: list[int]
) -> list[SampledToken]:
    out = [SampledToken(token_id=t) for t in token_ids]
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    if not wanted:
        return out
    logprobs = torch.log_softmax(raw_logits[wanted], dim=-1)
    for j, i in enumerate(wanted):
        k = rows[i].params.logprobs or 0
        out[i].logprob = float(logprobs[j, token_ids[i]])
        if k:
            values, ids = logprobs[j].topk(k)
            out[i].top_logprobs = dict(zip(ids.tolist(), values.tolist(), strict=True))
    return out
