"""The GPU tests' near-tie oracle (tests/near_ties.py) fails where it should."""

import pytest

from llm_worker.engine.request import RequestOutput
from llm_worker.engine.sequence import SampledToken, SequenceMetrics
from tests.near_ties import assert_agree_up_to_near_ties, first_difference


def output(tokens: list[int], top: list[dict[int, float]] | None = None) -> RequestOutput:
    logprobs = None
    if top is not None:
        logprobs = [SampledToken(t, top_logprobs=row) for t, row in zip(tokens, top, strict=True)]
    return RequestOutput("r", [1], tokens, None, "length", 0, SequenceMetrics(0.0), logprobs)


REFERENCE = output([5, 6, 7], [{5: -0.1}, {6: -0.70, 9: -0.72, 8: -3.0}, {7: -0.2}])


def test_first_difference() -> None:
    assert first_difference([1, 2], [1, 2]) is None
    assert first_difference([1, 3, 4], [1, 2, 4]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_streams_that_part_at_a_near_tie_pass() -> None:
    assert assert_agree_up_to_near_ties([output([5, 9, 1]), REFERENCE], [REFERENCE] * 2, 0.05) == 1


@pytest.mark.parametrize(
    "got, message",
    [
        ([5, 8, 1], "nats below"),  # ranked 2.3 nats lower
        ([5, 4, 1], "not in the reference's top"),
        ([5, 6], "one run ended there"),
    ],
)
def test_streams_that_part_elsewhere_fail(got: list[int], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        assert_agree_up_to_near_ties([output(got)], [REFERENCE], 0.05, min_whole=0.0)


def test_too_few_whole_streams_fail() -> None:
    with pytest.raises(AssertionError, match="1 of 3 streams agree whole"):
        assert_agree_up_to_near_ties([output([5, 9, 1])] * 2 + [REFERENCE], [REFERENCE] * 3, 0.05)
