"""Greedy token streams of two runs in 16-bit arithmetic, compared up to a near tie.

Two runs that batch the same requests differently (sync against async scheduling, with and
without speculation, graphs against eager) round their logits differently, so greedy decoding
may part where the top two tokens are nearly tied; after that the streams share nothing. The
oracle: each pair agrees whole, or where it first differs, the other run's token is among the
reference run's top logprobs, within `margin` nats of its choice. A mask on the wrong row, a
stale token or a bad kernel parts streams at a token the reference ranks far lower, or not at
all among its top, and fails here.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from llm_worker.engine.request import RequestOutput


@dataclass(frozen=True)
class Parting:
    stream: int
    token: int  # the index where the streams first differ
    theirs: int | None  # the reference's token there (None: its stream ended)
    ours: int | None  # the other run's token there (None: its stream ended)
    gap: float | None  # theirs' logprob less ours' in the reference's top; None: not both there


def first_difference(got: Sequence[int], want: Sequence[int]) -> int | None:
    """The first index where the streams differ (one ending early counts); None when equal."""
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))


def partings(got: Sequence[RequestOutput], want: Sequence[RequestOutput]) -> list[Parting]:
    """Where each stream of `got` that differs from its reference in `want` first does."""
    assert len(got) == len(want)
    found = []
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        first = first_difference(g.output_token_ids, w.output_token_ids)
        if first is None:
            continue
        theirs = w.output_token_ids[first] if first < len(w.output_token_ids) else None
        ours = g.output_token_ids[first] if first < len(g.output_token_ids) else None
        top = (w.logprobs[first].top_logprobs or {}) if w.logprobs and theirs is not None else {}
        gap = top[theirs] - top[ours] if theirs in top and ours in top else None
        found.append(Parting(index, first, theirs, ours, gap))
    return found


def assert_agree_up_to_near_ties(
    got: Sequence[RequestOutput],
    want: Sequence[RequestOutput],  # the reference run, asked for logprobs
    margin: float,
    min_whole: float = 0.5,  # the share of streams that must agree whole
) -> int:
    """Returns how many streams agree whole."""
    parted = partings(got, want)
    for p in parted:
        g, w = got[p.stream], want[p.stream]
        where = f"stream {p.stream} parts at token {p.token}"
        assert p.theirs is not None and p.ours is not None, (
            f"{where}: one run ended there ({g.finish_reason} against {w.finish_reason})"
        )
        assert w.logprobs is not None, "the reference run must be asked for logprobs"
        top = w.logprobs[p.token].top_logprobs or {}
        assert p.gap is not None, f"{where}: token {p.ours} is not in the reference's top {top}"
        assert p.gap < margin, f"{where}: {p.ours} is {p.gap:.3f} nats below {p.theirs} ({top})"
    num_whole = len(want) - len(parted)
    assert num_whole >= min_whole * len(want), f"{num_whole} of {len(want)} streams agree whole"
    return num_whole
