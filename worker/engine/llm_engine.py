"""The synchronous engine: add_request / step / abort, and generate() on top of them."""

import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch

from schemas import SamplingParams
from worker.engine.block_manager import PrefixCacheStats
from worker.engine.detokenizer import IncrementalDetokenizer
from worker.engine.model_runner import ModelRunner
from worker.engine.sampler import SampledToken, SamplingRow
from worker.engine.scheduler import RequestRejected, ScheduledSequence, Scheduler
from worker.engine.sequence import Sequence, SequenceMetrics
from worker.engine.speculative import SpecStats, Speculator

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
    ) -> None:
        self.runner = runner
        self.speculator = speculator
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
        from worker.engine.builder import build_engine

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
        """Run one batch; return the requests that finished in it (and any aborted since)."""
        finished, self._aborted = self._aborted, []
        started = time.monotonic()
        spec = self.speculator
        if spec is not None:
            sched = self.scheduler
            spec.plan(sched.running, self.max_model_len, sched.num_waiting, self.max_num_seqs)
        plan = self.scheduler.schedule()
        if plan.is_empty:
            return finished
        for item in plan.scheduled:
            if item.seq.metrics.first_scheduled_time is None:
                item.seq.metrics.first_scheduled_time = started
        pure_decode = plan.is_pure_decode
        if spec is not None and any(item.num_spec for item in plan.scheduled):
            scheduled, emitted = spec.execute(plan.scheduled, self.runner, self._verify_rows)
        else:
            scheduled, emitted = plan.scheduled, self._execute(plan.scheduled)
        self.num_steps += 1
        self.num_computed_tokens += plan.num_batched_tokens
        now = time.monotonic()
        num_emitted = sum(
            self._apply(item, tokens, now, finished)
            for item, tokens in zip(scheduled, emitted, strict=True)
        )
        if spec is not None and pure_decode:
            spec.end_step(len(scheduled), num_emitted, now - started)
        return finished

    def _execute(self, scheduled: list[ScheduledSequence]) -> list[list[SampledToken]]:
        rows = [self._sampling_row(item.seq) for item in scheduled if item.samples]
        sampled = iter(self.runner.execute(scheduled, rows))
        return [[next(sampled)] if item.samples else [] for item in scheduled]

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
            if self._append_token(request, token, now):
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

    def _append_token(self, request: _Request, token: SampledToken, now: float) -> bool:
        """Append a sampled token; True when the sequence is done."""
        seq, p = request.seq, request.seq.params
        seq.token_ids.append(token.token_id)
        if seq.metrics.first_token_time is None:
            seq.metrics.first_token_time = now
        elif self.inter_token_latency_observer is not None and seq.metrics.last_token_time:
            self.inter_token_latency_observer(now - seq.metrics.last_token_time)
        seq.metrics.last_token_time = now
        if request.logprobs is not None:
            request.logprobs.append(token)
        stopped = request.detokenizer is not None and request.detokenizer.push(token.token_id)
        is_eos = not p.ignore_eos and token.token_id in self.eos_token_ids
        hit_stop = stopped or is_eos or token.token_id in p.stop_token_ids
        if hit_stop and seq.num_output_tokens >= p.min_tokens:
            seq.finish_reason = "stop"
        if seq.finish_reason is None and (
            seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len
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
