"""Property tests of the KV block bookkeeping, driven through the real scheduler.

Random add / step / abort / preempt sequences over a small alphabet (so prefixes are shared and
cached blocks get revived and evicted) must keep: no leaked or doubly freed block, reference
counts equal to the number of sequences holding each block, and eviction in LRU order.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from schemas import SamplingParams
from worker.config import SchedulerConfig
from worker.engine.block_manager import BlockManager
from worker.engine.scheduler import RequestRejected, Scheduler
from worker.engine.sequence import Sequence, SequenceMetrics

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
        self.clock = 0
        # block id -> op when it last entered the free list; all start free at op 0
        self.freed_at: dict[int, int] = dict.fromkeys(range(NUM_BLOCKS), 0)
        self.next_id = 0

    def _observe(self, before_free: set[int], before_cached: dict[int, int]) -> None:
        """After an op: stamp newly freed blocks, check every eviction took the oldest."""
        self.clock += 1
        now_free = {b.block_id for b in self.bm.free_list}
        for block_id in now_free - before_free:
            self.freed_at[block_id] = self.clock
        evicted = [
            bid
            for h, bid in before_cached.items()
            if self.bm.cached.get(h) is None or self.bm.cached[h].block_id != bid
        ]
        survivors = [
            self.freed_at[b.block_id] for b in self.bm.free_list if b.block_hash is not None
        ]
        for block_id in evicted:
            if block_id in before_free:  # it was a free cached block, so this was an eviction
                assert all(self.freed_at[block_id] <= t for t in survivors), "evicted a newer block"

    def _snapshot(self) -> tuple[set[int], dict[int, int]]:
        return (
            {b.block_id for b in self.bm.free_list},
            {h: b.block_id for h, b in self.bm.cached.items()},
        )

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
        before = self._snapshot()
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
        self._observe(*before)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 100))
    def abort(self, index: int) -> None:
        before = self._snapshot()
        seq = self.live.pop(index % len(self.live))
        self.scheduler.finish(seq, "abort")
        self._observe(*before)

    @precondition(lambda self: self.scheduler.running)
    @rule()
    def preempt(self) -> None:
        before = self._snapshot()
        self.scheduler._preempt(self.scheduler.running.pop())
        self._observe(*before)

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
