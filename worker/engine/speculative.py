"""Speculative decoding around the engine's step: who drafts, how much, and whether it pays.

Before scheduling, each decoding sequence gets up to k drafts (n-gram) or k draft slots (draft
model, filled once the scheduler has given it blocks). The scheduler verifies them with the pending
token in one target pass; rejection.verify keeps the target's distribution; update rolls the
rest back. A controller (spec_controller) measures decode throughput with and without speculation
per batch-size bucket and keeps whichever is faster, so speculation turns itself off where
verifying k extra tokens per sequence and giving up async scheduling cost more than they save,
and back on where it pays. The controller times the steps itself: the engine only says when a
step begins and what it planned and emitted.
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from llm_worker.engine.draft import Draft, DraftProposer
from llm_worker.engine.faults import NO_FAULTS, fault_message, is_device_fault, isolating_faults
from llm_worker.engine.grammars import Grammars
from llm_worker.engine.model_runner import ModelRunner
from llm_worker.engine.ngram import NgramProposer
from llm_worker.engine.rejection import VerifyItem, verify
from llm_worker.engine.sampler import SamplingRow, sample
from llm_worker.engine.sampling_rows import SamplingRows
from llm_worker.engine.scheduler import SchedulerOutput
from llm_worker.engine.sequence import SampledToken, ScheduledSequence, Sequence
from llm_worker.engine.spec_controller import SpecController
from llm_worker.engine.step_result import StepResult
from llm_worker.engine.update import StepReport


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


@dataclass
class _Filled:
    """A speculating step's items once every draft is known."""

    scheduled: list[ScheduledSequence]
    verify_items: dict[int, VerifyItem]  # by item index
    faults: dict[Sequence, str]


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

    def begin_step(self, started: float) -> None:
        """A step() call begins at `started`: the pure decode step before it, if any, is over."""
        speculated = self.controller.step_began(started)
        if speculated is not None:
            if speculated:
                self.stats.num_steps_speculating += 1
            else:
                self.stats.num_steps_plain += 1

    def decide(
        self, running: list[Sequence], num_waiting: int = 0, max_num_seqs: int | None = None
    ) -> bool:
        """Whether this step speculates (the controller's choice). Reads no token values, so
        it may run while the last step's tokens are in flight."""
        decoding = [s for s in running if s.num_tokens - s.num_computed_tokens == 1]
        # A waiting request is admitted (and prefilled) this step only if there is a free slot;
        # with the batch full, a backlog still makes a pure decode step.
        can_admit = num_waiting > 0 and (max_num_seqs is None or len(running) < max_num_seqs)
        pure_decode = not can_admit and len(decoding) == len(running)
        self.speculating = bool(decoding) and self.controller.decide(len(decoding), pure_decode)
        return self.speculating

    def propose(
        self, running: list[Sequence], max_model_len: int
    ) -> tuple[dict[Sequence, list[int]], dict[Sequence, str]]:
        """Drafts for this step (after `decide` said yes), needing every token on the host:
        n-gram drafts, or k slots the draft model fills once the step is scheduled; and the
        sequences whose proposing raised, with why."""
        drafts: dict[Sequence, list[int]] = {}
        faults: dict[Sequence, str] = {}
        for seq in running:
            if seq.num_tokens - seq.num_computed_tokens != 1:
                continue
            k = self._num_drafts(seq, max_model_len)
            if k <= 0:
                continue
            if self.ngram is None:
                drafts[seq] = [0] * k
                continue
            try:
                proposal = self.ngram.propose(seq.request_id, seq.token_ids, k)
            except Exception as exc:
                if is_device_fault(exc):
                    raise
                faults[seq] = fault_message(exc)
                continue
            if proposal:
                drafts[seq] = proposal
        return drafts, faults

    def _num_drafts(self, seq: Sequence, max_model_len: int) -> int:
        p = seq.params
        if not p.speculative:
            return 0
        room = min(p.max_tokens - seq.num_output_tokens - 1, max_model_len - seq.num_tokens)
        return min(self.config.num_speculative_tokens, room)

    def fill(
        self, scheduled: list[ScheduledSequence], rows: SamplingRows, generator: torch.Generator
    ) -> _Filled:
        """The step's items with real drafts, and a VerifyItem per speculating item index.
        A sequence the draft model fails on runs without drafts, and fails."""
        spec_idx = [i for i, item in enumerate(scheduled) if item.num_spec]
        if self.draft is None:
            verify_items = {}
            for i in spec_idx:
                drafts = list(scheduled[i].spec_token_ids)
                verify_items[i] = VerifyItem(rows.verifying(scheduled[i].seq, drafts), drafts)
            return _Filled(scheduled, verify_items, {})
        proposals, faults = self._draft([scheduled[i] for i in spec_idx], rows, generator)
        filled = _Filled(list(scheduled), {}, {})
        for j, (i, proposal) in enumerate(zip(spec_idx, proposals, strict=True)):
            item = scheduled[i]
            if j in faults:
                filled.scheduled[i] = ScheduledSequence(item.seq, 1, item.start)
                filled.faults[item.seq] = faults[j]
                continue
            filled.scheduled[i] = dataclasses.replace(
                item, spec_token_ids=tuple(proposal.token_ids)
            )
            item_rows = rows.verifying(item.seq, proposal.token_ids)
            filled.verify_items[i] = VerifyItem(item_rows, proposal.token_ids, proposal.probs)
        return filled

    def _draft(
        self, items: list[ScheduledSequence], rows: SamplingRows, generator: torch.Generator
    ) -> tuple[list[Draft], Mapping[int, str]]:
        # The draft samples from its own distribution (q), penalties or not: rejection
        # sampling only needs q to be what each draft was drawn from.
        draft = self.draft
        assert draft is not None
        first_rows = [rows.row(item.seq) for item in items]
        return isolating_faults(
            lambda: draft.propose(items, first_rows, generator),
            len(items),
            lambda j: draft.propose(items[j : j + 1], first_rows[j : j + 1], generator)[0],
            lambda parts: [Draft([], None) if p is None else p for p in parts],
        )

    def run(
        self,
        scheduled: list[ScheduledSequence],
        runner: ModelRunner,
        rows: SamplingRows,
        grammars: Grammars,
    ) -> StepResult:
        """A step with drafts: draft (draft model), one target pass over every position, then
        verification for the speculating sequences and plain sampling for the others. A
        constrained sequence's k + 1 rows are masked after each prefix of its drafts, so a
        draft the grammar refuses has probability 0 and is rejected."""
        generator = runner.generator
        filled = self.fill(scheduled, rows, generator)
        mask = grammars.step_mask(filled.scheduled)  # filled while the target runs
        try:
            logits = runner.logits(filled.scheduled)
            if mask is not None:
                mask.apply_(logits)
        finally:
            if mask is not None:
                mask.settle()
        plain: list[ScheduledSequence] = []  # items sampled as without speculation
        plain_idx: list[int] = []
        spec_idx: list[int] = []
        first = 0
        for i, item in enumerate(filled.scheduled):
            n = item.num_logits_rows
            if i in filled.verify_items:
                spec_idx.extend(range(first, first + n))
            elif n:
                plain_idx.append(first)
                plain.append(item)
            first += n
        plain_rows = [rows.row(item.seq) for item in plain]
        sampled, plain_faults = _sample(logits, plain_idx, plain_rows, generator)
        verify_items = list(filled.verify_items.values())
        verified, verify_faults = _verify(logits[spec_idx], verify_items, generator)
        sampled_iter, verified_iter = iter(sampled), iter(verified)
        tokens = [
            next(verified_iter) if i in filled.verify_items
            else ([next(sampled_iter)] if item.samples else [])
            for i, item in enumerate(filled.scheduled)
        ]  # fmt: skip
        faults = filled.faults
        if mask is not None:
            faults.update(mask.faults)
        if plain_faults or verify_faults:
            verifying = [filled.scheduled[i].seq for i in filled.verify_items]
            faults.update((plain[j].seq, message) for j, message in plain_faults.items())
            faults.update((verifying[j], message) for j, message in verify_faults.items())
        return StepResult(filled.scheduled, tokens=tokens, faults=faults,
                          drafted_by_model=self.draft is not None)  # fmt: skip

    def end_step(
        self, plan: SchedulerOutput, report: StepReport, started: float, idle: bool
    ) -> None:
        """A step is over: count its drafts and what was kept of them; a pure decode step is
        reported to the controller when the next begins (not after an idle spell)."""
        for num_drafts, num_kept in report.verified:
            self._record(num_drafts, num_kept)
        if plan.is_pure_decode and not idle:
            self.controller.decode_step_ran(
                len(plan.scheduled), report.num_emitted, self.speculating, started
            )

    def _record(self, num_drafts: int, num_kept: int) -> None:
        s = self.stats
        s.num_drafts += 1
        s.num_draft_tokens += num_drafts
        s.num_accepted_tokens += num_kept
        for j in range(num_kept):
            s.accepted_by_position[j] += 1

    def snapshot(self) -> SpecStats:
        return dataclasses.replace(
            self.stats, accepted_by_position=list(self.stats.accepted_by_position)
        )

    def forget(self, seq: Sequence) -> None:
        if self.ngram is not None:
            self.ngram.forget(seq.request_id)


def _sample(
    logits: torch.Tensor, idx: list[int], rows: list[SamplingRow], generator: torch.Generator
) -> tuple[list[SampledToken], Mapping[int, str]]:
    """The tokens of rows `idx` of `logits`; a row whose sampling raises gets none, and fails."""
    if not rows:
        return [], NO_FAULTS
    picked = logits[idx]
    return isolating_faults(
        lambda: sample(picked, rows, generator),
        len(rows),
        lambda i: sample(picked[i : i + 1], rows[i : i + 1], generator)[0],
        lambda parts: [SampledToken(0) if t is None else t for t in parts],
    )


def _verify(
    logits: torch.Tensor, items: list[VerifyItem], generator: torch.Generator
) -> tuple[list[list[SampledToken]], Mapping[int, str]]:
    """Each item's emitted tokens; an item whose verification raises emits none, and fails."""
    if not items:
        return [], NO_FAULTS

    def alone(j: int) -> list[SampledToken]:
        start = sum(len(item.rows) for item in items[:j])
        return verify(logits[start : start + len(items[j].rows)], items[j : j + 1], generator)[0]

    return isolating_faults(
        lambda: verify(logits, items, generator),
        len(items),
        alone,
        lambda parts: [[] if t is None else t for t in parts],
    )
