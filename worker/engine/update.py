"""The one writer of request state: each step's plan and result applied to its sequences.

Nothing else changes a sequence's tokens, counts, finish or metrics (the scheduler moves it
between queues, the block manager gives it blocks). Per step: the plan's admissions and
preemptions set computed-token counts; the result's tokens are appended (or, for a step still
on the device, placeholders stand in for them until it is resolved); the stop and length rules
run; computed blocks enter the prefix cache and rejected drafts' blocks go back; finished
requests leave the scheduler.

A constrained request (structured outputs) waits here, out of the scheduler, until its grammar
is compiled (`compiled` then gives it its matcher; `refuse` fails it as `invalid_request`), and
each token it takes in advances its matcher; a grammar that reaches its end finishes it `stop`.

A fault in one request's own work here (detokenizing, a stop check, hashing its blocks) fails
that request with `internal_error`; the others carry on. Device faults propagate.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llm_worker.engine.faults import fault_message, is_device_fault
from llm_worker.engine.request import Request
from llm_worker.engine.scheduler import Scheduler, SchedulerOutput
from llm_worker.engine.sequence import SampledToken, ScheduledSequence, Sequence
from llm_worker.engine.step_result import PendingInputs, StepResult, TokenFuture

log = logging.getLogger(__name__)

# Stands in seq.token_ids for a token an async step sampled that has not reached the host.
PLACEHOLDER = -1
INTERNAL_ERROR = "internal_error"  # schemas.ErrorCode.INTERNAL, as a finish reason
INVALID_REQUEST = "invalid_request"  # schemas.ErrorCode.INVALID: a constraint that cannot run


@dataclass
class StepReport:
    num_emitted: int = 0  # tokens the step gave its sequences, a token in flight counted
    verified: list[tuple[int, int]] = field(default_factory=list)  # (drafts, drafts kept)


@dataclass(frozen=True)
class _InFlight:
    tokens: TokenFuture
    slots: list[tuple[Sequence, int]]  # per sampling item: its sequence, its placeholder's index


class Updater:
    def __init__(
        self, scheduler: Scheduler, eos_token_ids: Iterable[int], max_model_len: int
    ) -> None:
        self.scheduler = scheduler
        self.block_manager = scheduler.block_manager
        self.eos_token_ids = tuple(eos_token_ids)
        self.max_model_len = max_model_len
        self.requests: dict[str, Request] = {}
        # Constrained, grammar not compiled yet, by arrival; keyed by id: leaving it is one
        # lookup, not a pass over every request still waiting.
        self.compiling: dict[str, Request] = {}
        self.in_flight: _InFlight | None = None
        # Called with each inter-token gap in seconds (telemetry's histogram); None: not measured.
        self.inter_token_latency_observer: Callable[[float], None] | None = None
        self._finished: list[Request] = []  # since the last take_finished()

    def add(self, request: Request) -> None:
        """Queue a request; a constrained one waits in `compiling` until `compiled`. Raises
        RequestRejected for what can never fit."""
        seq = request.seq
        if request.grammar is None:
            self.scheduler.add(seq)
        else:
            self.scheduler.check_admissible(seq.num_prompt_tokens, seq.params.max_tokens)
            self.compiling[seq.request_id] = request
        self.requests[seq.request_id] = request

    def compiled(self, request: Request, matcher: Any) -> None:
        """Its grammar is ready: the request gets its matcher (a structured.matcher
        SequenceMatcher at the grammar's start) and joins the scheduler's queue."""
        del self.compiling[request.seq.request_id]
        request.matcher = matcher
        self.scheduler.add(request.seq)

    def refuse(self, request: Request, message: str) -> None:
        """Its constraint cannot run (the grammar backend said why): invalid_request."""
        request.error = message
        self._finish(request, INVALID_REQUEST)

    def abort(self, request_id: str) -> None:
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, "abort")

    def fail(self, seq: Sequence, message: str) -> None:
        """End a request whose own work raised: finish reason internal_error, with `message`."""
        request = self.requests.get(seq.request_id)
        if request is None or request.seq is not seq:
            return
        log.warning("request %s failed: %s", seq.request_id, message)
        request.error = message
        self._finish(request, INTERNAL_ERROR)

    def take_finished(self) -> list[Request]:
        finished, self._finished = self._finished, []
        return finished

    @property
    def has_finished(self) -> bool:
        return bool(self._finished)

    def update(
        self, plan: SchedulerOutput, result: StepResult | None, started: float
    ) -> StepReport:
        """Apply a step's plan and what it produced (None: the plan ran nothing). A launched
        step's tokens are applied by a later call, after the step after it is queued."""
        self._apply_plan(plan, started)
        if result is None:
            self.drain()
            return StepReport()
        if result.in_flight is not None:
            return self._apply_launched(result, result.in_flight)
        self.drain()  # the step read the tokens in flight on the device: they are there now
        return self._apply_tokens(result)

    def drain(self, then: Callable[[], None] | None = None) -> None:
        """Wait for the step in flight, if any, and apply its tokens. `then` runs once their
        grammars have taken them, before the rest (detokenizing, stop checks) is applied: the
        next step's mask fills beside that work. It runs with nothing in flight too."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is not None:
            self._resolve(in_flight, then)
        elif then is not None:
            then()

    def pending_inputs(self, scheduled: list[ScheduledSequence]) -> PendingInputs | None:
        """The rows of a step about to run whose input tokens are still in flight."""
        if self.in_flight is None:
            return None
        source = {seq: (i, index) for i, (seq, index) in enumerate(self.in_flight.slots)}
        rows, source_idx, offset = [], [], 0
        for item in scheduled:
            hit = source.get(item.seq)
            if hit is not None and hit[1] == item.start:
                rows.append(offset)
                source_idx.append(hit[0])
            offset += item.num_new_tokens
        return PendingInputs(rows, source_idx, self.in_flight.tokens) if rows else None

    def _apply_plan(self, plan: SchedulerOutput, started: float) -> None:
        for item in plan.admitted:
            seq = item.seq
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = item.start
            seq.num_computed_tokens = item.start  # the prefix-cache hit
            seq.num_draft_computed = 0  # cached blocks may hold no draft KV: the draft redoes them
        for seq in plan.preempted:
            seq.num_computed_tokens = 0  # recomputed from its tokens when admitted again
        for item in plan.scheduled:
            if item.seq.metrics.first_scheduled_time is None:
                item.seq.metrics.first_scheduled_time = started
        for seq, message in plan.failed:
            self.fail(seq, message)

    def _apply_launched(self, result: StepResult, tokens: TokenFuture) -> StepReport:
        """Advance past a step still on the device: a placeholder per sampled token, then the
        step before it (if any) resolved."""
        slots = []
        for item in result.scheduled:
            seq = item.seq
            if seq.is_finished:  # it stopped on a token drained while this step was queued
                if item.samples:
                    slots.append((seq, PLACEHOLDER))  # keeps the slots in line with the ids
                continue
            seq.num_computed_tokens += item.num_new_tokens
            if item.samples:
                slots.append((seq, seq.num_tokens))
                seq.token_ids.append(PLACEHOLDER)
            else:  # a prefill chunk: its blocks hold no placeholder
                try:
                    self.block_manager.cache_computed_blocks(seq)
                except Exception as exc:
                    self._fail_on(seq, exc)
        for seq, message in result.faults.items():
            self.fail(seq, message)
        previous, self.in_flight = self.in_flight, _InFlight(tokens, slots)
        if previous is not None:
            self._resolve(previous)
        return StepReport(num_emitted=sum(index != PLACEHOLDER for _, index in slots))

    def _resolve(self, in_flight: _InFlight, then: Callable[[], None] | None = None) -> None:
        """Put an async step's tokens in place of their placeholders and apply them."""
        token_ids = in_flight.tokens.tolist()
        now = time.monotonic()
        live: list[tuple[Request, int, int]] = []  # (request, placeholder index, token)
        for (seq, index), token_id in zip(in_flight.slots, token_ids, strict=True):
            request = self.requests.get(seq.request_id)
            if request is not None and request.seq is seq:  # else aborted or failed in flight
                live.append((request, index, token_id))
        grammar_ends = self._advance_grammars(live)
        try:
            if then is not None:
                then()
        finally:  # the tokens are applied whatever `then` raised: nothing else holds them
            self._apply_resolved(live, grammar_ends, now)

    def _apply_resolved(
        self,
        live: list[tuple[Request, int, int]],
        grammar_ends: dict[Sequence, bool | Exception],
        now: float,
    ) -> None:
        for request, index, token_id in live:
            seq = request.seq
            seq.token_ids[index] = token_id
            try:
                reason = self._stop_reason(request, token_id, index, now, grammar_ends.get(seq))
                self.block_manager.cache_computed_blocks(seq)  # stops short of a placeholder
            except Exception as exc:
                self._fail_on(seq, exc)
                continue
            if reason is not None:
                self._finish(request, reason, now)

    def _advance_grammars(
        self, live: list[tuple[Request, int, int]]
    ) -> dict[Sequence, bool | Exception]:
        """Each constrained request of `live` takes its token, all in one call: whether its
        grammar ended there, or why it could not take the token (a fault of that request)."""
        constrained = [(r.seq, m, token_id) for r, _, token_id in live
                       if (m := r.matcher) is not None]  # fmt: skip
        if not constrained:
            return {}
        matchers = [m for _, m, _ in constrained]
        try:
            # through an instance: importing the matcher's module here would bring in xgrammar
            # and torch, which this bookkeeping core does without
            accepted = matchers[0].try_accept_each(matchers, [t for _, _, t in constrained])
        except Exception as exc:  # the batch call cannot say whose: every one of them
            return {seq: exc for seq, _, _ in constrained}
        return {seq: matcher.is_terminated if ok else matcher.refusal(token_id)
                for (seq, matcher, token_id), ok in zip(constrained, accepted, strict=True)}

    def _apply_tokens(self, result: StepResult) -> StepReport:
        assert result.tokens is not None
        report = StepReport()
        now = time.monotonic()
        for item, tokens in zip(result.scheduled, result.tokens, strict=True):
            seq, num_spec = item.seq, item.num_spec
            if item.samples and not num_spec:  # a token now, whatever becomes of it
                report.num_emitted += 1
            if seq.is_finished:  # it stopped on the token resolved before this step's
                continue
            if seq in result.faults:
                self.fail(seq, result.faults[seq])
                continue
            request = self.requests[seq.request_id]
            try:
                num_appended, reason = self._append(request, item, tokens, now)
                if num_spec:
                    self._settle_drafts(item, reason is not None, result.drafted_by_model)
                self.block_manager.cache_computed_blocks(seq)
            except Exception as exc:
                self._fail_on(seq, exc)
                continue
            if num_spec:  # drafts past a stop are not counted as kept
                report.verified.append((num_spec, min(len(tokens) - 1, num_appended)))
                report.num_emitted += num_appended
            if reason is not None:
                self._finish(request, reason, now)
        return report

    def _append(
        self, request: Request, item: ScheduledSequence, tokens: list[SampledToken], now: float
    ) -> tuple[int, str | None]:
        """Advance a sequence past its step and append its tokens up to a stop; returns how
        many were appended and the finish reason, if one was met. A verified item keeps the
        KV of its kept drafts only."""
        seq, num_spec = request.seq, item.num_spec
        num_kept = len(tokens) - 1 if num_spec else 0
        seq.num_computed_tokens += item.num_new_tokens - num_spec + num_kept
        num_appended, reason = 0, None
        for token in tokens:
            num_appended += 1
            seq.token_ids.append(token.token_id)
            if request.logprobs is not None:
                request.logprobs.append(token)
            reason = self._stop_reason(request, token.token_id, seq.num_tokens - 1, now)
            if reason is not None:
                break
        return num_appended, reason

    def _settle_drafts(
        self, item: ScheduledSequence, stopped: bool, drafted_by_model: bool
    ) -> None:
        seq = item.seq
        if drafted_by_model:  # its KV reached the last draft; only verified positions count
            seq.num_draft_computed = min(item.start + item.num_spec, seq.num_computed_tokens)
        # A stop inside the kept drafts leaves computed positions past the last token.
        seq.num_computed_tokens = min(seq.num_computed_tokens, seq.num_tokens)
        if not stopped:
            self.block_manager.trim(seq, seq.num_tokens)  # the rejected drafts' slots

    def _stop_reason(
        self,
        request: Request,
        token_id: int,
        index: int,
        now: float,
        grammar_end: bool | Exception | None = None,  # the grammar took it already: its outcome
    ) -> str | None:
        """Take in the token now at seq.token_ids[index] (the sequence may already hold a
        placeholder after it): its timing, its text, and whether it ends the sequence."""
        seq, p = request.seq, request.seq.params
        metrics = seq.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = now
        elif self.inter_token_latency_observer is not None and metrics.last_token_time:
            self.inter_token_latency_observer(now - metrics.last_token_time)
        metrics.last_token_time = now
        stopped = request.detokenizer is not None and request.detokenizer.push(token_id)
        if request.matcher is not None:
            # The mask let only what the grammar allows through, so a refusal (GrammarRejected)
            # is a fault of this request. A grammar at its end allows nothing more: it ends
            # the output whatever min_tokens or ignore_eos say (they shape the mask instead).
            if grammar_end is None:
                request.matcher.accept([token_id])
                grammar_end = request.matcher.is_terminated
            if isinstance(grammar_end, Exception):
                raise grammar_end
            if grammar_end:
                return "stop"
        is_eos = not p.ignore_eos and token_id in self.eos_token_ids
        num_tokens = index + 1
        num_output = num_tokens - seq.num_prompt_tokens
        if (stopped or is_eos or token_id in p.stop_token_ids) and num_output >= p.min_tokens:
            return "stop"
        if num_output >= p.max_tokens or num_tokens >= self.max_model_len:
            return "length"
        return None

    def _fail_on(self, seq: Sequence, exc: Exception) -> None:
        if is_device_fault(exc):
            raise exc
        self.fail(seq, fault_message(exc))

    def _finish(self, request: Request, reason: str, now: float | None = None) -> None:
        seq = request.seq
        # A token in flight (the step after its last, or the one an abort overtakes) is dropped.
        while seq.token_ids and seq.token_ids[-1] == PLACEHOLDER:
            seq.token_ids.pop()
        if request.grammar is not None and request.matcher is None:  # still compiling
            self.compiling.pop(seq.request_id, None)
        seq.finish_reason = reason
        seq.metrics.finished_time = time.monotonic() if now is None else now
        self.scheduler.finish(seq)
        del self.requests[seq.request_id]
        self._finished.append(request)
