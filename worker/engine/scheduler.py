"""Continuous batching under one rule: each sequence's computed tokens catch up to its tokens.

A step hands every scheduled sequence a token count under a token budget and a sequence cap, so
prefill, chunked prefill, prefix hits and decode are only different counts in one mixed batch.
No torch here.
"""

import bisect
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

from llm_worker.engine.block_manager import BlockManager, cdiv
from llm_worker.engine.config import SchedulerConfig
from llm_worker.engine.faults import fault_message, is_device_fault
from llm_worker.engine.sequence import ScheduledSequence, Sequence, SequenceStatus

NO_DRAFTS: Mapping[Sequence, list[int]] = {}


class RequestRejected(Exception):
    """A request that can never be served; `code` is one of schemas.ErrorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class SchedulerOutput:
    """A step's plan. The scheduler has moved sequences between its queues and given them
    blocks; the counts that go with admission and preemption are update's to apply."""

    scheduled: list[ScheduledSequence] = field(default_factory=list)
    admitted: list[ScheduledSequence] = field(default_factory=list)  # start: cached tokens
    preempted: list[Sequence] = field(default_factory=list)
    failed: list[tuple[Sequence, str]] = field(default_factory=list)  # and why

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def is_pure_decode(self) -> bool:
        """Every sequence computes its pending token (and any drafts) and samples."""
        return bool(self.scheduled) and all(
            s.num_new_tokens - s.num_spec == 1 and s.samples for s in self.scheduled
        )


def _rank(seq: Sequence) -> tuple[int, int]:
    """Running sequences are kept in this order, which is the waiting queue's: higher priority
    first, then the older request. A step serves them in it, and preemption takes from its end,
    so the victim is the newest of the lowest priority, never a higher-priority request that
    happened to be admitted last."""
    return -seq.priority, seq.arrival_idx


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.running: list[Sequence] = []
        self._waiting: list[tuple[int, int, Sequence]] = []  # heap of (-priority, arrival_idx)
        self._next_arrival_idx = 0
        self.num_preemptions = 0

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def check_admissible(self, num_prompt_tokens: int, max_tokens: int) -> None:
        if num_prompt_tokens == 0:
            raise RequestRejected("invalid_request", "the prompt has no tokens")
        total = num_prompt_tokens + max_tokens
        if total > self.config.max_model_len:
            raise RequestRejected(
                "prompt_too_long",
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total} "
                f"exceeds max_model_len ({self.config.max_model_len})",
            )
        budget = self.config.max_num_batched_tokens
        if not self.config.enable_chunked_prefill and total > budget:
            # Unchunked, a (re)prefill of up to `total` tokens must fit one step.
            raise RequestRejected(
                "prompt_too_long",
                f"prompt + max_tokens = {total} tokens exceeds --max-num-batched-tokens "
                f"({budget}) with chunked prefill off; raise it or enable chunked prefill",
            )
        bm = self.block_manager
        if cdiv(total, bm.block_size) > bm.num_blocks:
            raise RequestRejected(
                "prompt_too_long",
                f"prompt + max_tokens = {total} tokens needs more KV cache than exists "
                f"({bm.num_blocks} blocks of {bm.block_size} tokens)",
            )

    def add(self, seq: Sequence) -> None:
        self.check_admissible(seq.num_prompt_tokens, seq.params.max_tokens)
        seq.arrival_idx = self._next_arrival_idx
        self._next_arrival_idx += 1
        self._push_waiting(seq)

    def _push_waiting(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        heapq.heappush(self._waiting, (-seq.priority, seq.arrival_idx, seq))

    def may_preempt(self) -> bool:
        """Whether scheduling could run out of blocks for the running sequences' next tokens."""
        bs = self.block_manager.block_size
        needed = sum(max(cdiv(s.num_tokens, bs) - len(s.block_table), 0) for s in self.running)
        return needed > self.block_manager.num_free_blocks

    def schedule(self, drafts: Mapping[Sequence, list[int]] = NO_DRAFTS) -> SchedulerOutput:
        """Plan a step; `drafts` are the speculator's proposals for decoding sequences, which
        ride along with their pending token where budget and blocks allow."""
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget, drafts)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(
        self, out: SchedulerOutput, budget: int, drafts: Mapping[Sequence, list[int]]
    ) -> int:
        needs_after = self._blocks_needed_after() if drafts else []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.num_tokens >= min(seq.max_total_tokens, self.config.max_model_len):
                # Async scheduling: the token in flight is its last; it finishes on arrival.
                i += 1
                continue
            pending = seq.num_tokens - seq.num_computed_tokens
            num_new = min(pending, budget)
            if num_new <= 0:
                i += 1
                continue
            # Drafts are optional: a sequence drops its drafts before anyone is preempted for
            # them, its own step or those of the sequences after it (each may need a fresh
            # block for its token).
            spec: tuple[int, ...] = ()
            if drafts and pending == 1:
                spec = tuple(drafts.get(seq, ())[: budget - 1])
            if spec and self._spec_fits(seq, len(spec), needs_after[i]):
                out.scheduled.append(
                    ScheduledSequence(seq, 1 + len(spec), seq.num_computed_tokens, spec)
                )
                budget -= 1 + len(spec)
                i += 1
                continue
            while not self.block_manager.allocate(seq, seq.num_computed_tokens + num_new):
                victim = self.running.pop()  # the last in rank gives its blocks back
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.scheduled.append(ScheduledSequence(seq, num_new, seq.num_computed_tokens))
                budget -= num_new
                i += 1
                continue
            break  # seq itself was preempted: everything after it already was too
        return budget

    def _blocks_needed_after(self) -> list[int]:
        """For each running sequence, how many of those after it need a fresh block for their
        next token (an upper bound once the step has started preempting)."""
        bs = self.block_manager.block_size
        needs = [cdiv(s.num_computed_tokens + 1, bs) > len(s.block_table) for s in self.running]
        after, total = [0] * len(needs), 0
        for i in range(len(needs) - 1, -1, -1):
            after[i] = total
            total += needs[i]
        return after

    def _spec_fits(self, seq: Sequence, num_spec: int, reserve: int) -> bool:
        """Allocate for the pending token and `num_spec` drafts if that leaves `reserve` blocks
        for the sequences still to be scheduled."""
        bm = self.block_manager
        num_tokens = seq.num_computed_tokens + 1 + num_spec
        extra = max(cdiv(num_tokens, bm.block_size) - len(seq.block_table), 0)
        if bm.num_free_blocks - extra < reserve:
            return False
        return bm.allocate(seq, num_tokens)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        bm = self.block_manager
        while self._waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self._waiting[0][2]
            try:
                cached = bm.find_cached_prefix(seq)
            except Exception as exc:  # its own hashing failed: the request fails, not the step
                if is_device_fault(exc):
                    raise
                heapq.heappop(self._waiting)
                seq.status = SequenceStatus.FINISHED
                out.failed.append((seq, fault_message(exc)))
                continue
            num_computed = len(cached) * bm.block_size
            num_new = seq.num_tokens - num_computed
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            # Admission reserves the whole prompt so a chunked prefill is never starved mid-way.
            if not bm.allocate(seq, seq.num_tokens, cached):
                break
            heapq.heappop(self._waiting)
            bm.record_admission(seq, num_computed)
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=_rank)
            item = ScheduledSequence(seq, min(num_new, budget), num_computed)
            out.admitted.append(item)
            out.scheduled.append(item)
            budget -= item.num_new_tokens

    def _preempt(self, seq: Sequence) -> None:
        """Recompute-style: drop the KV, keep the tokens, go back to the front of the queue."""
        self.block_manager.free(seq)
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._push_waiting(seq)

    def finish(self, seq: Sequence) -> None:
        """Release a sequence, running or waiting (abort), and its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self._waiting = [entry for entry in self._waiting if entry[2] is not seq]
            heapq.heapify(self._waiting)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
