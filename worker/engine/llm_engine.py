"""The synchronous engine: add_request / step / abort, and generate() on top of them.

A step is four verbs: propose (drafts, if speculating) -> schedule -> run (the runner, or the
speculator for a step with drafts) -> update (the one writer of request state). With async
scheduling, step n+1 is queued on the device before step n's tokens are applied, so the host's
work overlaps the device's; a step that speculates, could preempt, or samples rows that read
the host's token history waits for the step in flight first. A step with grammar rows queues
its forward, then advances its grammars by step n's tokens and fills its mask beside the rest of
step n's update, while the forward runs.
"""

import time
from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seq

from llm_worker.config import EngineSettings
from llm_worker.engine.builder import EngineParts, build_parts
from llm_worker.engine.engine_stats import EngineStats, engine_stats
from llm_worker.engine.faults import fault_message, is_device_fault
from llm_worker.engine.grammars import Grammars
from llm_worker.engine.memory_profile import DeviceMemory
from llm_worker.engine.offline import run_to_completion
from llm_worker.engine.request import RequestOutput, new_request
from llm_worker.engine.request_checks import check_request
from llm_worker.engine.sampler import SamplingRow, needs_host_history
from llm_worker.engine.sampling_rows import SamplingRows
from llm_worker.engine.scheduler import NO_DRAFTS, RequestRejected, SchedulerOutput
from llm_worker.engine.sequence import ScheduledSequence, Sequence, SequenceMetrics
from llm_worker.engine.speculative import Speculator
from llm_worker.engine.step_mask import StepMask
from llm_worker.engine.step_result import StepResult
from llm_worker.engine.update import PLACEHOLDER
from llm_worker.schemas import ErrorCode, SamplingParams
from llm_worker.structured.errors import StructuredOutputError
from llm_worker.structured.stats import StructuredStats

__all__ = ["PLACEHOLDER", "EngineStats", "LLMEngine", "RequestOutput", "RequestRejected"]

COMPILE_WAIT_S = 0.005  # an idle engine's wait for a grammar, between looks at its commands


class LLMEngine:
    def __init__(self, parts: EngineParts) -> None:
        self.runner = parts.runner
        self.updater = parts.updater
        self.scheduler = self.updater.scheduler
        self.block_manager = self.scheduler.block_manager
        self.requests = self.updater.requests  # read only: update adds and removes them
        self.rows = SamplingRows(self.requests, self.updater.eos_token_ids)
        self.structured = parts.structured  # None: the model has no tokenizer
        self.grammars = Grammars(parts.structured, self.requests, self.updater.eos_token_ids)
        self.tokenizer = parts.tokenizer
        self.model_id = parts.model_id
        self.speculator: Speculator | None = parts.speculator
        # With speculation, only the steps that do not speculate run async: drafts are
        # proposed from the host's tokens.
        self.async_scheduling = parts.async_scheduling
        self.num_computed_tokens = 0
        self.num_steps = 0
        self._num_generate_calls = 0

    @classmethod
    def from_settings(
        cls, settings: EngineSettings, memory: DeviceMemory | None = None
    ) -> "LLMEngine":
        """An engine for `settings`: device, weights, KV cache, tokenizer (see builder.py).
        `memory`: where the KV-cache size comes from (default: the device's own figures)."""
        return cls(build_parts(settings, memory))

    @property
    def max_num_seqs(self) -> int:
        return self.scheduler.config.max_num_seqs

    @property
    def max_model_len(self) -> int:
        return self.scheduler.config.max_model_len

    @property
    def inter_token_latency_observer(self) -> Callable[[float], None] | None:
        return self.updater.inter_token_latency_observer

    @inter_token_latency_observer.setter
    def inter_token_latency_observer(self, observe: Callable[[float], None] | None) -> None:
        self.updater.inter_token_latency_observer = observe

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
            message = f"request id {request_id!r} is already running"
            raise RequestRejected(ErrorCode.INVALID, message)
        check_request(prompt_token_ids, params, self.runner.model.config.vocab_size,
                      has_tokenizer=self.tokenizer is not None)  # fmt: skip
        seq = Sequence(
            request_id=request_id,
            token_ids=list(prompt_token_ids),
            num_prompt_tokens=len(prompt_token_ids),
            params=params,
            priority=priority,
            cache_salt=cache_salt,
            metrics=SequenceMetrics(arrival_time=arrival_time or time.monotonic()),
        )
        grammar = self.grammars.submit(params)  # compiles off this thread; the step waits
        try:  # what one request cannot build (its seed, say) fails it alone
            generator = None if params.seed is None else self.runner.seeded_generator(params.seed)
            request = new_request(seq, self.tokenizer, generator, grammar)
        except Exception as exc:
            if is_device_fault(exc):
                raise
            raise RequestRejected(ErrorCode.INTERNAL, fault_message(exc)) from exc
        self.updater.add(request)

    def abort(self, request_id: str) -> None:
        """End a request; the next step() returns it with finish reason abort."""
        self.updater.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or self.updater.has_finished

    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    def step(self) -> list[RequestOutput]:
        """Run one step; return the requests that finished (and any aborted since)."""
        started = time.monotonic()
        self._admit_compiled()
        drafts = self._propose(started)
        if self.updater.in_flight is not None and self._must_drain():
            self.updater.drain()
        plan = self.scheduler.schedule(drafts)
        result = self._run(plan) if not plan.is_empty else None
        report = self.updater.update(plan, result, started)
        if not self.requests:  # what is in flight is for no one now: collect it, idle
            self.updater.drain()
        if plan.is_empty:
            self.grammars.wait_for_compiles(self.updater.compiling.values(), COMPILE_WAIT_S)
        if self.speculator is not None:
            self.speculator.end_step(plan, report, started, idle=not self.requests)
        return self._outputs()

    def _admit_compiled(self) -> None:
        """Requests whose grammar is ready join the scheduler; those it refused fail."""
        for request, matcher in self.grammars.compiled(self.updater.compiling.values()):
            if isinstance(matcher, StructuredOutputError):
                self.updater.refuse(request, matcher.message)
            else:
                self.updater.compiled(request, matcher)

    def _must_drain(self) -> bool:
        """Preemption recomputes from tokens: every token must be on the host."""
        return self.scheduler.may_preempt()

    def _propose(self, started: float) -> Mapping[Sequence, list[int]]:
        spec = self.speculator
        if spec is None:
            return NO_DRAFTS
        spec.begin_step(started)
        sched = self.scheduler
        if not spec.decide(sched.running, sched.num_waiting, self.max_num_seqs):
            return NO_DRAFTS
        self.updater.drain()  # drafts are proposed from every token
        drafts, faults = spec.propose(sched.running, self.max_model_len)
        for seq, message in faults.items():
            self.updater.fail(seq, message)
        return drafts

    def _run(self, plan: SchedulerOutput) -> StepResult:
        self.num_steps += 1
        self.num_computed_tokens += plan.num_batched_tokens
        scheduled = plan.scheduled
        if self.speculator is not None and any(item.num_spec for item in scheduled):
            return self.speculator.run(scheduled, self.runner, self.rows, self.grammars)
        rows = self.rows.of_step(scheduled)
        if self.async_scheduling and rows and not any(map(needs_host_history, rows)):
            return self._launch(scheduled, rows)
        if self.grammars.constrains(scheduled):
            self.updater.drain()  # a grammar's mask is filled from every token
        pending = self.updater.pending_inputs(scheduled)
        mask = self.grammars.step_mask(scheduled)  # filled while the forward runs
        try:
            return self.runner.execute(scheduled, rows, pending, mask)
        finally:
            _settle(mask)

    def _launch(self, scheduled: list[ScheduledSequence], rows: list[SamplingRow]) -> StepResult:
        """Queue the step without waiting for the one in flight. With grammar rows, the
        forward is queued first; then the step in flight is drained: its tokens advance the
        matchers, the mask starts filling, and the rest of the drain (detokenizing, stop
        checks) runs beside the fill, all while the device runs the forward. The sampling is
        queued after: the overlap kept is the forward's, the one lost is the sampling's."""
        pending = self.updater.pending_inputs(scheduled)
        if not self.grammars.constrains(scheduled):
            return self.runner.launch(scheduled, rows, pending)
        logits = self.runner.logits(scheduled, pending)
        masks: list[StepMask | None] = []
        self.updater.drain(then=lambda: masks.append(self.grammars.step_mask(scheduled)))
        mask = masks[0]  # rows of sequences the drain ended are filled and never used
        try:
            return self.runner.launch_sampling(scheduled, rows, logits, mask)
        finally:
            _settle(mask)

    def _outputs(self) -> list[RequestOutput]:
        finished = self.updater.take_finished()
        if self.speculator is not None:
            for request in finished:
                self.speculator.forget(request.seq)
        return [request.output() for request in finished]

    def structured_stats(self) -> StructuredStats | None:
        """The grammar backend's counters; None: the model has no tokenizer, so no backend."""
        return self.structured.stats() if self.structured is not None else None

    def stats(self) -> EngineStats:
        return engine_stats(self.scheduler, self.num_computed_tokens, self.num_steps,
                            self.speculator)  # fmt: skip

    def generate(
        self, prompts: Seq[list[int] | str], params: SamplingParams | Seq[SamplingParams]
    ) -> list[RequestOutput]:
        """Submit every prompt at once, run to completion, return outputs in prompt order."""
        self._num_generate_calls += 1
        return run_to_completion(self, f"generate-{self._num_generate_calls}", prompts, params)


def _settle(mask: StepMask | None) -> None:
    if mask is not None:
        mask.settle()
