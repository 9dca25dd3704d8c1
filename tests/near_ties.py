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

from llm_worker.engine.request import RequestOutput


def first_difference(got: Sequence[int], want: Sequence[int]) -> int | None:
    """The first index where the streams differ (one ending early counts); None when equal."""
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))


def assert_agree_up_to_near_ties(
    got: Sequence[RequestOutput],
    want: Sequence[RequestOutput],  # the reference run, asked for logprobs
    margin: float,
    min_whole: float = 0.5,  # the share of streams that must agree whole
) -> int:
    """Returns how many streams agree whole."""
    assert len(got) == len(want)
    num_whole = 0
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        first = first_difference(g.output_token_ids, w.output_token_ids)
        if first is None:
            num_whole += 1
            continue
        where = f"stream {index} parts at token {first}"
        assert first < min(len(g.output_token_ids), len(w.output_token_ids)), (
            f"{where}: one run ended there ({g.finish_reason} against {w.finish_reason})"
        )
        assert w.logprobs is not None, "the reference run must be asked for logprobs"
        top = w.logprobs[first].top_logprobs or {}
        theirs, ours = w.output_token_ids[first], g.output_token_ids[first]
        assert ours in top, f"{where}: token {ours} is not in the reference's top {top}"
        assert top[theirs] - top[ours] < margin, (
            f"{where}: {ours} is {top[theirs] - top[ours]:.3f} nats below {theirs} ({top})"
        )
    assert num_whole >= min_whole * len(want), f"{num_whole} of {len(want)} streams agree whole"
    return num_whole
