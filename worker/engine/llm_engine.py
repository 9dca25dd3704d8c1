"""The synchronous engine: add_request / step / abort, and generate() on top of them."""

import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llm_worker.engine.block_manager import PrefixCacheStats, cdiv
from llm_worker.engine.detokenizer import IncrementalDetokenizer
from llm_worker.engine.model_runner import AsyncTokens, ModelRunner, PendingTokens
from llm_worker.engine.sampler import SampledToken, SamplingRow, needs_host_history
from llm_worker.engine.scheduler import RequestRejected, ScheduledSequence, Scheduler
from llm_worker.engine.sequence import Sequence, SequenceMetrics
from llm_worker.engine.speculative import SpecStats, Speculator
from llm_worker.schemas import SamplingParams

log = logging.getLogger(__name__)

__all__ = ["EngineStats", "LLMEngine", "RequestOutput", "RequestRejected"]


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    text: str | None
    finish_reason: str | None
    num_cached_tokens: int
    metrics: SequenceMetrics
    logprobs: list[SampledToken] | None = None
    finished: bool = True


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache: PrefixCacheStats
    num_preemptions: int
    num_computed_tokens: int  # every token the model has run, prefill and decode
    num_steps: int
    spec: SpecStats | None = None  # None: speculative decoding is off


# Stands in seq.token_ids for a token an async step sampled that has not reached the host.
PLACEHOLDER = -1


@dataclass
class _InFlight:
    """An async step on the device: its tokens and, per sampled sequence, the index of its
    placeholder in seq.token_ids."""

    tokens: AsyncTokens
    slots: list[tuple[Sequence, int]]

    def pending_inputs(self, scheduled: list[ScheduledSequence]) -> PendingTokens | None:
        """The next step's input rows that are this step's tokens."""
        source = {seq: (i, index) for i, (seq, index) in enumerate(self.slots)}
        rows, source_idx, offset = [], [], 0
        for item in scheduled:
            hit = source.get(item.seq)
            if hit is not None and hit[1] == item.start:
                rows.append(offset)
                source_idx.append(hit[0])
            offset += item.num_new_tokens
        if not rows:
            return None
        return PendingTokens(
            np.array(rows, np.int64), self.tokens, np.array(source_idx, np.int64)
        )


@dataclass(frozen=True)
class _DecodeStep:
    """A pure decode step of a speculating engine, reported to the controller when the next
    step() call starts: a step costs its call's start to the next call's, so a drain, the
    device work a synchronous step leaves in the open and the pipeline refilled after it are
    all charged to a mode, and the steps' times add up to the run's."""

    num_decoding: int
    num_emitted: int
    speculated: bool  # the controller's decision for it
    started: float  # monotonic, when its step() call began


@dataclass
class _Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer | None
    generator: torch.Generator | None
    logprobs: list[SampledToken] | None = field(default=None)


class LLMEngine:
    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        tokenizer: Any,
        eos_token_ids: Seq[int],
        model_id: str,
        speculator: Speculator | None = None,
        async_scheduling: bool = False,
    ) -> None:
        self.runner = runner
        self.speculator = speculator
        # With speculation, only the steps that do not speculate run async: drafts are
        # proposed from the host's tokens.
        self.async_scheduling = async_scheduling
        self._in_flight: _InFlight | None = None
        self._last_decode: _DecodeStep | None = None  # not yet reported to the controller
        self.scheduler = scheduler
        self.block_manager = scheduler.block_manager
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        self.model_id = model_id
        self.requests: dict[str, _Request] = {}
        self._aborted: list[RequestOutput] = []
        self.num_computed_tokens = 0
        self.num_steps = 0
        self._num_generate_calls = 0
        # Called with each inter-token gap in seconds (telemetry's histogram); None: not measured.
        self.inter_token_latency_observer: Callable[[float], None] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> "LLMEngine":
        from llm_worker.engine.builder import build_engine

        return build_engine(settings)

    @property
    def max_num_seqs(self) -> int:
        return self.scheduler.config.max_num_seqs

    @property
    def max_model_len(self) -> int:
        return self.scheduler.config.max_model_len

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
    ) -> None:
        """Queue a request; raises RequestRejected for one that can never be served."""
        if request_id in self.requests:
            raise RequestRejected(
                "invalid_request", f"request id {request_id!r} is already running"
            )
        vocab = self.runner.model.config.vocab_size
        bad = next((t for t in prompt_token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestRejected(
                "invalid_request", f"token id {bad} outside the vocabulary (0..{vocab - 1})"
            )
        if params.stop and self.tokenizer is None:
            raise RequestRejected("invalid_request", "stop strings need a model with a tokenizer")
        seq = Sequence(
            request_id=request_id,
            token_ids=list(prompt_token_ids),
            num_prompt_tokens=len(prompt_token_ids),
            params=params,
            priority=priority,
            cache_salt=cache_salt,
            metrics=SequenceMetrics(arrival_time=arrival_time or time.monotonic()),
        )
        self.scheduler.add(seq)
        detok = None
        if self.tokenizer is not None:
            detok = IncrementalDetokenizer(
                self.tokenizer, params.stop, params.include_stop_str_in_output
            )
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.runner.device).manual_seed(params.seed)
        self.requests[request_id] = _Request(
            seq, detok, gen, [] if params.logprobs is not None else None
        )

    def abort(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        tokens = request.seq.token_ids
        if tokens and tokens[-1] == PLACEHOLDER:  # its async step is still in flight
            tokens.pop()
        self.scheduler.finish(request.seq, "abort")
        if self.speculator is not None:
            self.speculator.forget(request.seq)
        request.seq.metrics.finished_time = time.monotonic()
        self._aborted.append(self._output(request))

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or bool(self._aborted)

    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    def step(self) -> list[RequestOutput]:
        """Run one batch; return the requests that finished (and any aborted since).

        With async scheduling a step is queued on the device and this call returns while it
        runs: its tokens are applied by the next call, whose own step is queued first, so the
        host's work of step n+1 (scheduling, input building, stop checks, detokenization)
        overlaps the device's step n. Sequences then finish one call later. Steps that
        speculate (and the scheduling that could preempt) first wait for the step in flight.
        """
        started = time.monotonic()
        last, self._last_decode = self._last_decode, None
        if last is not None and self.speculator is not None:
            seconds = started - last.started
            self.speculator.end_step(last.num_decoding, last.num_emitted, seconds, last.speculated)
        finished = self._step(started)
        if not self.requests:  # the next call may come after an idle spell: nothing to time
            self._last_decode = None
        return finished

    def _step(self, started: float) -> list[RequestOutput]:
        finished, self._aborted = self._aborted, []
        spec = self.speculator
        if spec is not None:
            sched = self.scheduler
            if spec.decide(sched.running, sched.num_waiting, self.max_num_seqs):
                if self._in_flight is not None:  # drafts are proposed from every token
                    self._drain(finished)
                spec.propose(sched.running, self.max_model_len)
        if self._in_flight is not None and self._may_preempt():
            # Preemption recomputes a sequence from its tokens: they must all be on the host.
            self._drain(finished)
        plan = self.scheduler.schedule()
        if plan.is_empty:
            self._drain(finished)
            return finished
        for item in plan.scheduled:
            if item.seq.metrics.first_scheduled_time is None:
                item.seq.metrics.first_scheduled_time = started
        self.num_steps += 1
        self.num_computed_tokens += plan.num_batched_tokens
        pure_decode = plan.is_pure_decode
        if spec is None or not any(item.num_spec for item in plan.scheduled):
            self._step_plain(plan.scheduled, finished)
            if not self.requests and self._in_flight is not None:
                # Every request ended on the tokens just applied: what is in flight is for
                # none of them, so collect it now rather than whenever work comes next.
                self._drain(finished)
                return finished
            if spec is not None and pure_decode:
                n = len(plan.scheduled)  # each sequence samples one token, now or in flight
                self._last_decode = _DecodeStep(n, n, spec.speculating, started)
            return finished
        assert self._in_flight is None
        scheduled, emitted = spec.execute(plan.scheduled, self.runner, self._verify_rows)
        now = time.monotonic()
        num_emitted = sum(
            self._apply(item, tokens, now, finished)
            for item, tokens in zip(scheduled, emitted, strict=True)
        )
        if pure_decode:
            self._last_decode = _DecodeStep(len(scheduled), num_emitted, True, started)
        return finished

    def _step_plain(
        self, scheduled: list[ScheduledSequence], finished: list[RequestOutput]
    ) -> None:
        """A step without speculation: launched async when allowed, else run to its tokens.
        Either way the step in flight before it is applied after it is queued."""
        in_flight = self._in_flight
        sampling = [item for item in scheduled if item.samples]
        rows = [self._sampling_row(item.seq) for item in sampling]
        pending = in_flight.pending_inputs(scheduled) if in_flight is not None else None
        if self.async_scheduling and rows and not any(map(needs_host_history, rows)):
            queued = self.runner.launch(scheduled, rows, pending)
            slots = [(item.seq, item.seq.num_tokens) for item in sampling]
            launched = _InFlight(queued, slots)
            for item in scheduled:
                item.seq.num_computed_tokens += item.num_new_tokens
                if not item.samples:  # a prefill chunk: its blocks hold no placeholder
                    self.block_manager.cache_computed_blocks(item.seq)
            for seq, _ in launched.slots:
                seq.token_ids.append(PLACEHOLDER)
            self._in_flight = launched
            if in_flight is not None:
                self._resolve(in_flight, finished)
            return
        emitted = iter(self.runner.execute(scheduled, rows, pending))
        self._drain(finished)  # the device is past it: this step read its tokens back
        now = time.monotonic()
        for item in scheduled:
            tokens = [next(emitted)] if item.samples else []
            if not item.seq.is_finished:  # it may have stopped on the token resolved above
                self._apply(item, tokens, now, finished)

    def _may_preempt(self) -> bool:
        """Whether scheduling could run out of blocks for the running sequences' next tokens."""
        bs = self.block_manager.block_size
        needed = sum(
            max(cdiv(s.num_tokens, bs) - len(s.block_table), 0) for s in self.scheduler.running
        )
        return needed > self.block_manager.num_free_blocks

    def _drain(self, finished: list[RequestOutput]) -> None:
        """Wait for the step in flight, if any, and apply its tokens."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self._resolve(in_flight, finished)

    def _resolve(self, in_flight: _InFlight, finished: list[RequestOutput]) -> None:
        """Put an async step's tokens in place of their placeholders and apply them."""
        token_ids = in_flight.tokens.tolist()
        now = time.monotonic()
        for (seq, index), token_id in zip(in_flight.slots, token_ids, strict=True):
            request = self.requests.get(seq.request_id)
            if request is None or request.seq is not seq or seq.is_finished:
                continue  # aborted while in flight
            seq.token_ids[index] = token_id
            done = self._accept_token(request, SampledToken(token_id), now, index)
            if done:
                del seq.token_ids[index + 1 :]  # a placeholder of the step in flight, if any
                seq.num_computed_tokens = min(seq.num_computed_tokens, seq.num_tokens)
            self.block_manager.cache_computed_blocks(seq)
            if done:
                finished.append(self._finish(request, now))

    def _apply(
        self,
        item: ScheduledSequence,
        tokens: list[SampledToken],
        now: float,
        finished: list[RequestOutput],
    ) -> int:
        """Advance a sequence past its step and append its tokens (up to a stop); returns how
        many were appended. A verified item keeps the KV of its kept drafts only."""
        seq = item.seq
        num_kept = len(tokens) - 1 if item.num_spec else 0
        seq.num_computed_tokens += item.num_new_tokens - item.num_spec + num_kept
        request = self.requests[seq.request_id]
        done, num_appended = False, 0
        for token in tokens:
            num_appended += 1
            seq.token_ids.append(token.token_id)
            if request.logprobs is not None:
                request.logprobs.append(token)
            if self._accept_token(request, token, now, seq.num_tokens - 1):
                done = True
                break
        if item.num_spec:
            if self.speculator is not None:  # drafts past a stop are not counted as kept
                self.speculator.record(item.num_spec, min(num_kept, num_appended))
            seq.num_draft_computed = min(seq.num_draft_computed, seq.num_computed_tokens)
            # A stop inside the kept drafts leaves computed positions past the last token.
            seq.num_computed_tokens = min(seq.num_computed_tokens, seq.num_tokens)
            if not done:
                self.block_manager.trim(seq, seq.num_tokens)  # the rejected drafts' slots
        self.block_manager.cache_computed_blocks(seq)
        if done:
            finished.append(self._finish(request, now))
        return num_appended

    def _sampling_row(self, seq: Sequence, drafts: Seq[int] = ()) -> SamplingRow:
        """How to pick the token after seq.token_ids followed by `drafts`."""
        p = seq.params
        blocked: tuple[int, ...] = ()
        if seq.num_output_tokens + len(drafts) < p.min_tokens:
            blocked = tuple(p.stop_token_ids) + (() if p.ignore_eos else self.eos_token_ids)
        history = seq.token_ids
        if drafts and p.needs_penalties:  # only penalties read the history
            history = [*seq.token_ids, *drafts]
        return SamplingRow(
            params=p,
            token_ids=history,
            num_prompt_tokens=seq.num_prompt_tokens,
            generator=self.requests[seq.request_id].generator,
            blocked_token_ids=blocked,
        )

    def _verify_rows(self, seq: Sequence, drafts: list[int]) -> list[SamplingRow]:
        return [self._sampling_row(seq, drafts[:j]) for j in range(len(drafts) + 1)]

    def _accept_token(
        self, request: _Request, token: SampledToken, now: float, index: int
    ) -> bool:
        """Take in the token now at seq.token_ids[index] (the sequence may already hold a
        placeholder after it); True when the sequence is done."""
        seq, p = request.seq, request.seq.params
        if seq.metrics.first_token_time is None:
            seq.metrics.first_token_time = now
        elif self.inter_token_latency_observer is not None and seq.metrics.last_token_time:
            self.inter_token_latency_observer(now - seq.metrics.last_token_time)
        seq.metrics.last_token_time = now
        stopped = request.detokenizer is not None and request.detokenizer.push(token.token_id)
        is_eos = not p.ignore_eos and token.token_id in self.eos_token_ids
        hit_stop = stopped or is_eos or token.token_id in p.stop_token_ids
        num_tokens = index + 1
        num_output = num_tokens - seq.num_prompt_tokens
        if hit_stop and num_output >= p.min_tokens:
            seq.finish_reason = "stop"
        if seq.finish_reason is None and (
            num_output >= p.max_tokens or num_tokens >= self.max_model_len
        ):
            seq.finish_reason = "length"
        return seq.finish_reason is not None

    def _finish(self, request: _Request, now: float) -> RequestOutput:
        seq = request.seq
        self.scheduler.finish(seq, seq.finish_reason or "stop")
        if self.speculator is not None:
            self.speculator.forget(seq)
        seq.metrics.finished_time = now
        del self.requests[seq.request_id]
        return self._output(request)

    def _output(self, request: _Request) -> RequestOutput:
        seq = request.seq
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            output_token_ids=seq.output_token_ids,
            text=request.detokenizer.text if request.detokenizer is not None else None,
            finish_reason=seq.finish_reason,
            num_cached_tokens=seq.num_cached_tokens,
            metrics=seq.metrics,
            logprobs=request.logprobs,
        )

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=self.block_manager.usage,
            prefix_cache=self.block_manager.stats,
            num_preemptions=self.scheduler.num_preemptions,
            num_computed_tokens=self.num_computed_tokens,
            num_steps=self.num_steps,
            spec=self.speculator.snapshot() if self.speculator is not None else None,
        )

    def generate(
        self,
        prompts: Seq[list[int] | str],
        params: SamplingParams | Seq[SamplingParams],
    ) -> list[RequestOutput]:
        """Submit every prompt at once, run to completion, return outputs in prompt order."""
        param_list = (
            list(params) if not isinstance(params, SamplingParams) else [params] * len(prompts)
        )
        self._num_generate_calls += 1
        ids = [f"generate-{self._num_generate_calls}-{i}" for i in range(len(prompts))]
        for request_id, prompt, p in zip(ids, prompts, param_list, strict=True):
            tokens = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            self.add_request(request_id, tokens, p)
        done: dict[str, RequestOutput] = {}
        while len(done) < len(ids):
            for out in self.step():
                done[out.request_id] = out
        return [done[i] for i in ids]
