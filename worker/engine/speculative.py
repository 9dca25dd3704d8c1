"""Speculative decoding around the engine's step: who drafts, how much, and whether it pays.

Before scheduling, each decoding sequence gets up to k drafts (n-gram) or k draft slots (draft
model, filled once the scheduler has given it blocks). The scheduler verifies them with the pending
token in one target pass; rejection.verify keeps the target's distribution; the engine rolls the
rest back. A controller (spec_controller) measures decode throughput with and without speculation
per batch-size bucket and keeps whichever is faster, so speculation turns itself off where
verifying k extra tokens per sequence and giving up async scheduling cost more than they save,
and back on where it pays.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from llm_worker.engine.draft import DraftProposer
from llm_worker.engine.model_runner import ModelRunner
from llm_worker.engine.ngram import NgramProposer
from llm_worker.engine.rejection import VerifyItem, verify
from llm_worker.engine.sampler import SampledToken, SamplingRow, sample
from llm_worker.engine.scheduler import ScheduledSequence
from llm_worker.engine.sequence import Sequence
from llm_worker.engine.spec_controller import SpecController


@dataclass(frozen=True)
class SpecConfig:
    method: Literal["ngram", "draft"]
    num_speculative_tokens: int
    adaptive: bool = True
    disable_by_batch_size: int | None = None  # never speculate with this many decodes or more


@dataclass
class SpecStats:
    """Cumulative counters, as vLLM names them: a draft is one sequence's drafts in one step."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_by_position: list[int] = field(default_factory=list)  # [k]: drafts kept at j
    num_steps_speculating: int = 0  # decode steps run with speculation on
    num_steps_plain: int = 0  # decode steps the controller ran without it

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_tokens_per_draft(self) -> float:
        """Tokens a verified sequence emits per step: kept drafts plus the one sampled."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0


class Speculator:
    def __init__(
        self,
        config: SpecConfig,
        ngram: NgramProposer | None = None,
        draft: DraftProposer | None = None,
    ) -> None:
        assert (ngram is None) != (draft is None), "exactly one proposer"
        self.config = config
        self.ngram = ngram
        self.draft = draft
        self.controller = SpecController(config.adaptive, config.disable_by_batch_size)
        self.stats = SpecStats(accepted_by_position=[0] * config.num_speculative_tokens)
        self.speculating = False  # this step's decision

    def decide(
        self, running: list[Sequence], num_waiting: int = 0, max_num_seqs: int | None = None
    ) -> bool:
        """Whether this step speculates (the controller's choice); clears last step's drafts.
        Reads no token values, so it may run while the last step's tokens are in flight."""
        decoding = [s for s in running if s.num_tokens - s.num_computed_tokens == 1]
        # A waiting request is admitted (and prefilled) this step only if there is a free slot;
        # with the batch full, a backlog still makes a pure decode step.
        can_admit = num_waiting > 0 and (max_num_seqs is None or len(running) < max_num_seqs)
        pure_decode = not can_admit and len(decoding) == len(running)
        self.speculating = bool(decoding) and self.controller.decide(len(decoding), pure_decode)
        for seq in running:
            seq.spec_token_ids = []
        return self.speculating

    def propose(self, running: list[Sequence], max_model_len: int) -> None:
        """Drafts for this step (after `decide` said yes); needs every token on the host."""
        decoding = [s for s in running if s.num_tokens - s.num_computed_tokens == 1]
        for seq in decoding:
            k = self._num_drafts(seq, max_model_len)
            if k <= 0:
                continue
            if self.ngram is not None:
                seq.spec_token_ids = self.ngram.propose(seq.request_id, seq.token_ids, k)
            else:
                seq.spec_token_ids = [0] * k  # slots; the draft model fills them once scheduled

    def _num_drafts(self, seq: Sequence, max_model_len: int) -> int:
        p = seq.params
        if not p.speculative:
            return 0
        room = min(p.max_tokens - seq.num_output_tokens - 1, max_model_len - seq.num_tokens)
        return min(self.config.num_speculative_tokens, room)

    def fill(
        self,
        scheduled: list[ScheduledSequence],
        rows_for: Callable[[Sequence, list[int]], list[SamplingRow]],
        generator: torch.Generator | None,
    ) -> tuple[list[ScheduledSequence], dict[int, VerifyItem]]:
        """The step's items with real drafts, and a VerifyItem per speculating item index.
        `rows_for(seq, drafts)` gives the sampling rows of the positions after each draft."""
        spec_idx = [i for i, item in enumerate(scheduled) if item.num_spec]
        verify_items: dict[int, VerifyItem] = {}
        if self.draft is None:
            for i in spec_idx:
                drafts = list(scheduled[i].spec_token_ids)
                verify_items[i] = VerifyItem(rows_for(scheduled[i].seq, drafts), drafts)
            return scheduled, verify_items
        if not spec_idx:
            return scheduled, verify_items
        # The draft samples from its own distribution (q), penalties or not: rejection
        # sampling only needs q to be what each draft was drawn from.
        proposals = self.draft.propose(
            [scheduled[i] for i in spec_idx],
            [rows_for(scheduled[i].seq, [])[0] for i in spec_idx],
            generator,
        )
        out = list(scheduled)
        for i, draft in zip(spec_idx, proposals, strict=True):
            out[i] = dataclasses.replace(scheduled[i], spec_token_ids=tuple(draft.token_ids))
            rows = rows_for(scheduled[i].seq, draft.token_ids)
            verify_items[i] = VerifyItem(rows, draft.token_ids, draft.probs)
        return out, verify_items

    def execute(
        self,
        scheduled: list[ScheduledSequence],
        runner: ModelRunner,
        rows_for: Callable[[Sequence, list[int]], list[SamplingRow]],
    ) -> tuple[list[ScheduledSequence], list[list[SampledToken]]]:
        """A step with drafts: draft (draft model), one target pass over every position, then
        verification for the speculating sequences and plain sampling for the others."""
        generator = runner.generator
        scheduled, verify_items = self.fill(scheduled, rows_for, generator)
        logits = runner.logits(scheduled)
        plain_idx: list[int] = []
        plain_rows: list[SamplingRow] = []
        spec_idx: list[int] = []
        first = 0
        for i, item in enumerate(scheduled):
            n = item.num_logits_rows
            if i in verify_items:
                spec_idx.extend(range(first, first + n))
            elif n:
                plain_idx.append(first)
                plain_rows.append(rows_for(item.seq, [])[0])
            first += n
        plain = iter(sample(logits[plain_idx], plain_rows, generator) if plain_idx else [])
        verified = iter(verify(logits[spec_idx], list(verify_items.values()), generator))
        emitted = [
            next(verified) if i in verify_items else ([next(plain)] if item.samples else [])
            for i, item in enumerate(scheduled)
        ]
        return scheduled, emitted

    def record(self, num_drafts: int, num_kept: int) -> None:
        s = self.stats
        s.num_drafts += 1
        s.num_draft_tokens += num_drafts
        s.num_accepted_tokens += num_kept
        for j in range(num_kept):
            s.accepted_by_position[j] += 1

    def end_step(
        self, num_decoding: int, num_emitted: int, seconds: float, speculated: bool
    ) -> None:
        """A pure decode step is over: feed the controller. `speculated`: the mode the
        controller chose for it (a step in speculating mode that found no drafts counts as
        one: it is what that mode cost); `seconds`: its step() call's start to the next's."""
        if speculated:
            self.stats.num_steps_speculating += 1
        else:
            self.stats.num_steps_plain += 1
        self.controller.observe(num_decoding, speculated, num_emitted, seconds)

    def snapshot(self) -> SpecStats:
        return dataclasses.replace(
            self.stats, accepted_by_position=list(self.stats.accepted_by_position)
        )

    def forget(self, seq: Sequence) -> None:
        if self.ngram is not None:
            self.ngram.forget(seq.request_id)
