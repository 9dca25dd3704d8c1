"""What a step gives back: one type whether the step ran plain, async or speculating."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from llm_worker.engine.faults import NO_FAULTS
from llm_worker.engine.sequence import SampledToken, ScheduledSequence, Sequence


class TokenFuture(Protocol):
    """Token ids sampled on the device; `tolist` waits until they reach the host."""

    def tolist(self) -> list[int]: ...


@dataclass(frozen=True)
class StepResult:
    """Exactly one of `tokens` and `in_flight` is set for a step that samples."""

    scheduled: list[ScheduledSequence]  # the items as run (a draft model fills in drafts)
    # Per item: nothing (a prefill chunk), one token, or the kept drafts and one more.
    tokens: list[list[SampledToken]] | None = None
    # Async scheduling: one token per item that samples, in item order, not on the host yet.
    in_flight: TokenFuture | None = None
    # Sequences whose own sampling raised, and why: they fail, the others go on.
    faults: Mapping[Sequence, str] = field(default_factory=lambda: NO_FAULTS)
    # A draft model proposed the drafts: its KV now covers each drafted item's positions up
    # to its last draft (exclusive).
    drafted_by_model: bool = False


@dataclass(frozen=True)
class PendingInputs:
    """Input rows of a step that are tokens of the step still in flight: row rows[i] of its
    flat input ids takes token source_idx[i] of `tokens`."""

    rows: list[int]
    source_idx: list[int]
    tokens: TokenFuture
