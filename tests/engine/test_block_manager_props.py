"""Property tests of the KV block bookkeeping and of update, driven through the real scheduler.

Random add / step / abort / preempt sequences over a small alphabet (so prefixes are shared and
cached blocks get revived and evicted) must keep: no leaked or doubly freed block, reference
counts equal to the number of sequences holding each block, eviction in LRU order, running
sequences in the order preemption relies on (priority, then age), and, with
steps left in flight (async scheduling), placeholders only ever at a sequence's end and never
in what a request returns.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llm_worker.engine.block_manager import BlockManager, chain_hash, root_hash
from llm_worker.engine.config import SchedulerConfig
from llm_worker.engine.request import Request
from llm_worker.engine.scheduler import RequestRejected, Scheduler, SchedulerOutput
from llm_worker.engine.sequence import SampledToken, Sequence, SequenceMetrics
from llm_worker.engine.step_result import StepResult
from llm_worker.engine.update import PLACEHOLDER, Updater
from llm_worker.schemas import SamplingParams

BLOCK_SIZE = 4
NUM_BLOCKS = 24
MAX_MODEL_LEN = 64


class HostTokens(list[int]):
    """Tokens of a launched step, already on the host (no device here)."""

    def tolist(self) -> list[int]:
        return list(self)


class BlockBookkeeping(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(NUM_BLOCKS, BLOCK_SIZE, enable_prefix_caching=True)
        config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=12,
                                 max_model_len=MAX_MODEL_LEN, enable_chunked_prefill=True)
        self.scheduler = Scheduler(config, self.bm)
        self.updater = Updater(self.scheduler, eos_token_ids=(), max_model_len=MAX_MODEL_LEN)
        self.next_id = 0
        self.num_launched = 0
        self._watch_evictions()

    def _watch_evictions(self) -> None:
        """Stamp every entry into the free list; on each eviction of a cached block, check that
        no cached free block had been waiting longer. Observes events, decides no order."""
        free_list = self.bm.free_list
        self.stamps = dict.fromkeys(range(NUM_BLOCKS), 0)
        self.num_events = 0
        self.num_evictions = 0

        def stamped(insert):  # type: ignore[no-untyped-def]
            def wrapper(block):  # type: ignore[no-untyped-def]
                self.num_events += 1
                self.stamps[block.block_id] = self.num_events
                insert(block)

            return wrapper

        free_list.append = stamped(free_list.append)  # type: ignore[method-assign]
        free_list.prepend = stamped(free_list.prepend)  # type: ignore[method-assign]
        take = self.bm._take_free_block

        def checked_take():  # type: ignore[no-untyped-def]
            cached_free = [b for b in free_list if b.block_hash is not None]
            block = take()
            if any(b is block for b in cached_free):
                self.num_evictions += 1
                oldest = min(self.stamps[b.block_id] for b in cached_free)
                assert self.stamps[block.block_id] == oldest, "evicted a newer cached block"
            return block

        self.bm._take_free_block = checked_take  # type: ignore[method-assign]

    @property
    def live(self) -> list[Sequence]:
        return [request.seq for request in self.updater.requests.values()]

    @rule(
        tokens=st.lists(st.integers(0, 2), min_size=1, max_size=30),
        max_tokens=st.integers(1, 12),
        priority=st.integers(0, 1),
    )
    def add(self, tokens: list[int], max_tokens: int, priority: int) -> None:
        seq = Sequence(
            request_id=f"r{self.next_id}",
            token_ids=tokens,
            num_prompt_tokens=len(tokens),
            params=SamplingParams(max_tokens=max_tokens),
            priority=priority,
            metrics=SequenceMetrics(arrival_time=0.0),
        )
        self.next_id += 1
        try:
            self.updater.add(Request(seq, detokenizer=None, generator=None, logprobs=None))
        except RequestRejected:
            total = len(tokens) + max_tokens
            assert total > MAX_MODEL_LEN or -(-total // BLOCK_SIZE) > NUM_BLOCKS
            return
        assert seq.request_id in self.updater.requests

    @rule(next_token=st.integers(0, 2), launch=st.booleans())
    def step(self, next_token: int, launch: bool) -> None:
        """One engine step: launched (its tokens stay in flight until the next) or run to
        its tokens, each sampled token `next_token`."""
        if self.updater.in_flight is not None and self.scheduler.may_preempt():
            self.updater.drain()  # as the engine does: preemption needs every token
        plan = self.scheduler.schedule()
        for item in plan.scheduled:
            assert len(item.seq.block_table) * BLOCK_SIZE >= item.start + item.num_new_tokens
        result = None
        if not plan.is_empty:
            num_sampling = sum(item.samples for item in plan.scheduled)
            if launch and num_sampling:
                in_flight = HostTokens([next_token] * num_sampling)
                result = StepResult(plan.scheduled, in_flight=in_flight)
                self.num_launched += 1
            else:
                result = StepResult(plan.scheduled, tokens=[
                    [SampledToken(next_token)] if item.samples else [] for item in plan.scheduled
                ])  # fmt: skip
        self.updater.update(plan, result, started=0.0)
        self._check_finished()

    @precondition(lambda self: self.updater.requests)
    @rule(index=st.integers(0, 100))
    def abort(self, index: int) -> None:
        self.updater.abort(self.live[index % len(self.live)].request_id)
        self._check_finished()

    @precondition(lambda self: self.scheduler.running)
    @rule()
    def preempt(self) -> None:
        self.updater.drain()  # as the engine does: preemption needs every token
        self._check_finished()
        if not self.scheduler.running:  # the tokens it waited for finished the last one
            return
        victim = self.scheduler.running.pop()
        self.scheduler._preempt(victim)
        self.updater.update(SchedulerOutput(preempted=[victim]), None, started=0.0)
        assert victim.num_computed_tokens == 0 and not victim.block_table

    def _check_finished(self) -> None:
        for request in self.updater.take_finished():
            seq = request.seq
            assert PLACEHOLDER not in seq.token_ids and not seq.block_table
            assert seq.finish_reason in ("length", "abort")
            if seq.finish_reason == "length":
                assert seq.num_output_tokens == seq.params.max_tokens

    @invariant()
    def blocks_are_consistent(self) -> None:
        self.bm.check_invariants(self.live)
        held = sum(1 for b in self.bm.blocks if b.ref_count > 0)
        assert held + self.bm.num_free_blocks == NUM_BLOCKS  # nothing leaked
        for seq in self.scheduler.running:
            assert seq.num_computed_tokens <= seq.num_tokens

    @invariant()
    def running_in_rank_order(self) -> None:
        """Higher priority first, then the older request: preemption takes from the end."""
        ranks = [(-seq.priority, seq.arrival_idx) for seq in self.scheduler.running]
        assert ranks == sorted(ranks)

    @invariant()
    def placeholders_only_at_the_end(self) -> None:
        flying = self.updater.in_flight
        in_flight = {seq for seq, _ in flying.slots} if flying is not None else set()
        for seq in self.live:
            assert PLACEHOLDER not in seq.token_ids[:-1]
            assert (seq.token_ids[-1] == PLACEHOLDER) == (seq in in_flight)

    @invariant()
    def hashes_are_of_real_tokens(self) -> None:
        """A block is hashed (and may enter the prefix cache) only once its tokens are real."""
        for seq in self.live:
            parent = root_hash(self.bm.model_id, seq.cache_salt)
            for i, block_hash in enumerate(seq.block_hashes):
                tokens = seq.token_ids[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                assert PLACEHOLDER not in tokens
                parent = chain_hash(parent, tokens)
                assert block_hash == parent

    def teardown(self) -> None:
        self.updater.drain()
        for seq in self.live:
            self.updater.abort(seq.request_id)
        self._check_finished()
        self.bm.check_invariants([])
        assert self.bm.num_free_blocks == NUM_BLOCKS


TestBlockBookkeeping = BlockBookkeeping.TestCase
TestBlockBookkeeping.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
