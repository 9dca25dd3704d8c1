"""Property tests of the KV block bookkeeping, driven through the real scheduler.

Random add / step / abort / preempt sequences over a small alphabet (so prefixes are shared and
cached blocks get revived and evicted) must keep: no leaked or doubly freed block, reference
counts equal to the number of sequences holding each block, and eviction in LRU order.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llm_worker.config import SchedulerConfig
from llm_worker.engine.block_manager import BlockManager
from llm_worker.engine.scheduler import RequestRejected, Scheduler
from llm_worker.engine.sequence import Sequence, SequenceMetrics
from llm_worker.schemas import SamplingParams

BLOCK_SIZE = 4
NUM_BLOCKS = 24


class BlockBookkeeping(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(NUM_BLOCKS, BLOCK_SIZE, enable_prefix_caching=True)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=4,
                max_num_batched_tokens=12,
                max_model_len=64,
                enable_chunked_prefill=True,
            ),
            self.bm,
        )
        self.live: list[Sequence] = []
        self.next_id = 0
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
            self.scheduler.add(seq)
        except RequestRejected:
            assert len(tokens) + max_tokens > 64 or -(-(len(tokens) + max_tokens) // 4) > NUM_BLOCKS
            return
        self.live.append(seq)

    @rule(next_token=st.integers(0, 2))
    def step(self, next_token: int) -> None:
        plan = self.scheduler.schedule()
        for item in plan.scheduled:
            seq = item.seq
            assert len(seq.block_table) * BLOCK_SIZE >= item.start + item.num_new_tokens
            seq.num_computed_tokens += item.num_new_tokens
            self.bm.cache_computed_blocks(seq)
            if item.samples:
                seq.token_ids.append(next_token)
                if seq.num_output_tokens >= seq.params.max_tokens:
                    self.scheduler.finish(seq, "length")
                    self.live.remove(seq)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100))
    def abort(self, index: int) -> None:
        seq = self.live.pop(index % len(self.live))
        self.scheduler.finish(seq, "abort")

    @precondition(lambda self: self.scheduler.running)
    @rule()
    def preempt(self) -> None:
        self.scheduler._preempt(self.scheduler.running.pop())

    @invariant()
    def blocks_are_consistent(self) -> None:
        self.bm.check_invariants(self.live)
        held = sum(1 for b in self.bm.blocks if b.ref_count > 0)
        assert held + self.bm.num_free_blocks == NUM_BLOCKS  # nothing leaked
        for seq in self.scheduler.running:
            assert seq.num_computed_tokens <= seq.num_tokens

    def teardown(self) -> None:
        for seq in list(self.live):
            self.scheduler.finish(seq, "abort")
        self.bm.check_invariants([])
        assert self.bm.num_free_blocks == NUM_BLOCKS


TestBlockBookkeeping = BlockBookkeeping.TestCase
TestBlockBookkeeping.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
