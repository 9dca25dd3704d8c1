"""Paged KV blocks with automatic prefix caching. Pure bookkeeping over ids: no torch.

Every full block gets a chained hash of (parent hash, its token ids); the chain starts from the
request's extra keys (model id, cache salt) so tenants with different salts never share blocks.
Blocks are reference-counted; a block freed with a hash stays findable until it is reused.
"""

from array import array
from collections.abc import Iterable
from dataclasses import dataclass

import xxhash

from llm_worker.engine.free_list import FreeBlockList, KVBlock
from llm_worker.engine.sequence import Sequence, cdiv


def root_hash(model_id: str, cache_salt: str | None) -> int:
    return xxhash.xxh3_128_intdigest(f"{model_id}\0{cache_salt or ''}".encode())


def chain_hash(parent_hash: int, token_ids: list[int]) -> int:
    payload = parent_hash.to_bytes(16, "little") + array("q", token_ids).tobytes()
    return xxhash.xxh3_128_intdigest(payload)


@dataclass
class PrefixCacheStats:
    """Token counters, as vLLM reports them; recomputation after preemption is not counted."""

    queries: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class BlockManager:
    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool, model_id: str = ""
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.model_id = model_id
        self.blocks = [KVBlock(block_id=i) for i in range(num_blocks)]
        self.free_list = FreeBlockList(self.blocks)
        self.cached: dict[int, KVBlock] = {}
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return self.free_list.num_free

    @property
    def usage(self) -> float:
        return 1.0 - self.free_list.num_free / self.num_blocks

    def update_hashes(self, seq: Sequence, num_blocks: int | None = None) -> None:
        """Hash the first `num_blocks` full blocks (default: every full block). A token still
        in flight (async scheduling) is a placeholder, so callers stop short of it."""
        bs = self.block_size
        limit = seq.num_tokens // bs if num_blocks is None else num_blocks
        while len(seq.block_hashes) < limit:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if i else root_hash(self.model_id, seq.cache_salt)
            seq.block_hashes.append(chain_hash(parent, seq.token_ids[i * bs : (i + 1) * bs]))

    def find_cached_prefix(self, seq: Sequence) -> list[KVBlock]:
        """Longest run of cached full blocks; the last token is always left to compute."""
        if not self.enable_prefix_caching:
            return []
        self.update_hashes(seq)
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in seq.block_hashes[:max_blocks]:
            block = self.cached.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def record_admission(self, seq: Sequence, num_hit_tokens: int) -> None:
        if seq.num_preemptions == 0 and self.enable_prefix_caching:
            self.stats.queries += seq.num_tokens
            self.stats.hits += num_hit_tokens

    def can_allocate(self, seq: Sequence, num_tokens: int, cached: list[KVBlock]) -> bool:
        num_new = cdiv(num_tokens, self.block_size) - len(seq.block_table) - len(cached)
        num_revived = sum(1 for block in cached if block.ref_count == 0)
        return max(num_new, 0) + num_revived <= self.free_list.num_free

    def allocate(self, seq: Sequence, num_tokens: int, cached: list[KVBlock] | None = None) -> bool:
        """Grow `seq.block_table` to hold `num_tokens`, first with `cached` (prefix hits)."""
        cached = cached or []
        if not self.can_allocate(seq, num_tokens, cached):
            return False
        for block in cached:
            if block.ref_count == 0:
                self.free_list.remove(block)
            block.ref_count += 1
            seq.block_table.append(block.block_id)
        if cached:  # prefix hits are registered already; blocks added below are not
            seq.num_hashed_blocks = len(seq.block_table)
        while len(seq.block_table) < cdiv(num_tokens, self.block_size):
            block = self._take_free_block()
            block.ref_count = 1
            seq.block_table.append(block.block_id)
        return True

    def _take_free_block(self) -> KVBlock:
        block = self.free_list.pop_oldest()
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) is block:
                del self.cached[block.block_hash]
            block.block_hash = None
        return block

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register blocks whose every token now has its KV computed."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        if num_full <= seq.num_hashed_blocks:
            return
        self.update_hashes(seq, num_full)
        for i in range(seq.num_hashed_blocks, num_full):
            block = self.blocks[seq.block_table[i]]
            block_hash = seq.block_hashes[i]
            if block.block_hash is None and block_hash not in self.cached:
                block.block_hash = block_hash
                self.cached[block_hash] = block
        seq.num_hashed_blocks = num_full

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Give back tail blocks past `num_tokens` (those that held rejected drafts' KV)."""
        keep = cdiv(num_tokens, self.block_size)
        while len(seq.block_table) > keep:
            block = self.blocks[seq.block_table.pop()]
            block.ref_count -= 1
            assert block.ref_count == 0 and block.block_hash is None, block
            self.free_list.prepend(block)

    def free(self, seq: Sequence) -> None:
        # Reverse order: a sequence's tail blocks are the least likely to be shared, so they are
        # evicted before its head blocks.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                if block.block_hash is None:
                    self.free_list.prepend(block)
                else:
                    self.free_list.append(block)
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def check_invariants(self, live: Iterable[Sequence]) -> None:
        """For tests: ref counts equal holders, free list holds exactly the unreferenced blocks."""
        holders = [0] * self.num_blocks
        for seq in live:
            for block_id in seq.block_table:
                holders[block_id] += 1
        for block in self.blocks:
            assert block.ref_count == holders[block.block_id], (block, holders[block.block_id])
            assert block.in_free_list == (block.ref_count == 0), block
        assert sum(1 for _ in self.free_list) == self.free_list.num_free
        for block_hash, block in self.cached.items():
            assert block.block_hash == block_hash
