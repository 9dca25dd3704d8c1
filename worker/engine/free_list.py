"""Intrusive doubly-linked list of free KV blocks: O(1) append, pop-oldest and remove-anywhere.

A freed block keeps its prefix hash and goes to the tail; allocation takes from the head, so the
least recently freed cached block is the one evicted, and a prefix hit removes its block from the
middle in O(1).
"""

from dataclasses import dataclass, field


@dataclass(eq=False)
class KVBlock:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    prev: "KVBlock | None" = field(default=None, repr=False)
    next: "KVBlock | None" = field(default=None, repr=False)
    in_free_list: bool = False


class FreeBlockList:
    def __init__(self, blocks: list[KVBlock]) -> None:
        self._head = KVBlock(block_id=-1)  # sentinels keep every operation branch-free
        self._tail = KVBlock(block_id=-1)
        self._head.next = self._tail
        self._tail.prev = self._head
        self.num_free = 0
        for block in blocks:
            self.append(block)

    def append(self, block: KVBlock) -> None:
        """Newest end: evicted last."""
        assert self._tail.prev is not None
        self._insert_after(self._tail.prev, block)

    def prepend(self, block: KVBlock) -> None:
        """Oldest end: for blocks with no cached content, so they are reused before any cache."""
        self._insert_after(self._head, block)

    def _insert_after(self, node: KVBlock, block: KVBlock) -> None:
        assert not block.in_free_list, f"block {block.block_id} freed twice"
        following = node.next
        assert following is not None
        node.next = block
        block.prev = node
        block.next = following
        following.prev = block
        block.in_free_list = True
        self.num_free += 1

    def remove(self, block: KVBlock) -> None:
        assert block.in_free_list, f"block {block.block_id} is not free"
        assert block.prev is not None and block.next is not None
        block.prev.next = block.next
        block.next.prev = block.prev
        block.prev = block.next = None
        block.in_free_list = False
        self.num_free -= 1

    def pop_oldest(self) -> KVBlock:
        first = self._head.next
        if first is None or first is self._tail:
            raise IndexError("no free KV blocks")
        self.remove(first)
        return first

    def __iter__(self):  # oldest first; for tests and debugging
        node = self._head.next
        while node is not None and node is not self._tail:
            yield node
            node = node.next
