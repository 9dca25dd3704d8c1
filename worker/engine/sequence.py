"""One request's token state, and its share of one step. No torch.

Who writes what (tests/engine/test_sequence_writers.py holds the code to it): `update.py` writes
a sequence's tokens, counts, finish and metrics; `scheduler.py` only its place in the queues
(status, arrival order, preemption count); `block_manager.py` only its blocks (block table,
block hashes). Everything else reads.
"""

import enum
from dataclasses import dataclass, field

from llm_worker.schemas import SamplingParams


def cdiv(a: int, b: int) -> int:
    """Groups of `b` that hold `a` items: KV blocks for a token count, for one."""
    return -(-a // b)


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass
class SequenceMetrics:
    """Monotonic seconds (time.monotonic) of the points a client's timings are made from."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class SampledToken:
    token_id: int
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None


@dataclass(eq=False)
class Sequence:
    """`num_computed_tokens` catches up to `num_tokens`: the whole scheduling rule rests on it."""

    request_id: str
    token_ids: list[int]  # prompt followed by output
    num_prompt_tokens: int
    params: SamplingParams
    metrics: SequenceMetrics
    priority: int = 0
    arrival_idx: int = 0  # admission order; ties in priority go to the older request
    cache_salt: str | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at first admission
    num_preemptions: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # one per full block, chained
    num_hashed_blocks: int = 0  # leading blocks of block_table registered in the prefix cache
    finish_reason: str | None = None
    # Speculative decoding with a draft model: leading positions that hold the draft's KV (it
    # catches up lazily, when the sequence next speculates).
    num_draft_computed: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def max_total_tokens(self) -> int:
        return self.num_prompt_tokens + self.params.max_tokens


@dataclass(frozen=True)
class ScheduledSequence:
    """A sequence's share of one step: positions [start, start + num_new_tokens), which are
    seq.token_ids from `start`, then the draft tokens being verified (counted in
    num_new_tokens)."""

    seq: Sequence
    num_new_tokens: int
    start: int
    spec_token_ids: tuple[int, ...] = ()
    logits_rows: int | None = None  # None: derived (see num_logits_rows)
    # True when this step reaches the end of the sequence, so its last logits are sampled.
    # Fixed when the step is planned: with async scheduling the sequence grows a placeholder
    # token as soon as the step is launched, while the step is still in flight.
    samples: bool = field(init=False)

    def __post_init__(self) -> None:
        end = self.start + self.num_new_tokens - len(self.spec_token_ids)
        object.__setattr__(self, "samples", end == self.seq.num_tokens)

    @property
    def num_spec(self) -> int:
        return len(self.spec_token_ids)

    @property
    def num_logits_rows(self) -> int:
        """Trailing positions whose logits the step needs: one per draft plus one, if sampling."""
        if self.logits_rows is not None:
            return self.logits_rows
        return 1 + self.num_spec if self.samples else 0

    def input_token_ids(self) -> list[int]:
        end = self.start + self.num_new_tokens - self.num_spec
        return [*self.seq.token_ids[self.start : end], *self.spec_token_ids]
