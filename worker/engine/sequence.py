"""One request's token state as the scheduler and block manager see it. No torch."""

import enum
from dataclasses import dataclass, field

from llm_worker.schemas import SamplingParams


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
    stop_text_len: int | None = None  # output text is cut here when a stop string matched
    # Speculative decoding: drafts the scheduler may verify this step after the pending token,
    # and how many leading positions hold the draft model's KV (it catches up lazily).
    spec_token_ids: list[int] = field(default_factory=list)
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
