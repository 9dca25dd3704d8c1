"""Prompt-lookup (n-gram) drafts: continue the sequence the way it went after an earlier copy of
its last n tokens, for the longest n in [min_n, max_n] that has one (the earliest such copy, which
leaves the longest continuation to copy from).

Each sequence keeps one index entry per position: where each min_n-gram ended, in order. A step
looks up the sequence's last min_n tokens, then extends each earlier occurrence backwards to see
how much of the last max_n tokens it matches. Indexing is incremental (work per appended token,
never a rescan of a long prompt) and memory is one int per token, not one key per n.
"""

from dataclasses import dataclass, field

import numpy as np

MAX_CANDIDATES = 256  # occurrences of the min_n-gram examined per step, earliest first
BULK = 64  # at least this many new tokens (a prompt) are indexed with numpy
_MIX = np.int64(0x100000001B3)  # FNV prime: keys mix the gram's tokens, collisions are checked


@dataclass
class _Index:
    first: dict[int, int] = field(default_factory=dict)  # gram key -> where it first ended
    later: dict[int, list[int]] = field(default_factory=dict)  # -> where it ended since
    num_indexed: int = 0  # token_ids[:num_indexed] are indexed

    def add(self, key: int, end: int) -> None:
        if self.first.setdefault(key, end) != end:
            self.later.setdefault(key, []).append(end)

    def ends(self, key: int) -> list[int]:
        first = self.first.get(key)
        return [] if first is None else [first, *self.later.get(key, ())]

    @property
    def size(self) -> int:
        return len(self.first) + sum(len(v) for v in self.later.values())


def _key(tokens: list[int]) -> int:
    key = 0
    for t in tokens:
        key = ((key * 0x100000001B3) ^ t) & 0xFFFFFFFFFFFFFFFF
    return key - (1 << 64) if key >= 1 << 63 else key  # as numpy's wrapping int64 has it


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"prompt lookup needs 1 <= min ({min_n}) <= max ({max_n})")
        self.min_n, self.max_n = min_n, max_n
        self._indexes: dict[str, _Index] = {}

    def propose(self, key: str, token_ids: list[int], k: int) -> list[int]:
        """Up to `k` tokens that followed the longest earlier match of the sequence's tail."""
        index = self._indexes.get(key)
        if index is None or index.num_indexed > len(token_ids):
            index = self._indexes[key] = _Index()
        last = len(token_ids) - 1
        if last + 1 < self.min_n:
            return []
        self._extend(index, token_ids)
        tail = token_ids[last - self.min_n + 1 :]
        best_end, best_len = -1, 0
        for end in index.ends(_key(tail))[:MAX_CANDIDATES]:
            if end == last:
                break  # the suffix itself, always the last entry
            if token_ids[end - self.min_n + 1 : end + 1] != tail:
                continue  # a key collision
            n = self.min_n
            while n < self.max_n and end - n >= 0 and token_ids[end - n] == token_ids[last - n]:
                n += 1
            if n > best_len:
                best_end, best_len = end, n
                if n == self.max_n:
                    break
        if best_end < 0:
            return []
        return token_ids[best_end + 1 : best_end + 1 + k]

    def forget(self, key: str) -> None:
        self._indexes.pop(key, None)

    def _extend(self, index: _Index, token_ids: list[int]) -> None:
        n = self.min_n
        first = max(index.num_indexed, n - 1)
        if len(token_ids) - first >= BULK and not index.first:
            self._bulk(index, token_ids, first)
        else:
            for end in range(first, len(token_ids)):
                index.add(_key(token_ids[end - n + 1 : end + 1]), end)
        index.num_indexed = len(token_ids)

    def _bulk(self, index: _Index, token_ids: list[int], first: int) -> None:
        """Index a whole prompt at once: every gram's key with numpy, first occurrences by
        np.unique; only repeated grams take a Python step each."""
        n = self.min_n
        tokens = np.asarray(token_ids, dtype=np.int64)
        ends = np.arange(first, len(tokens), dtype=np.int64)
        keys = np.zeros(len(ends), dtype=np.int64)
        with np.errstate(over="ignore"):
            for j in range(n):
                keys = (keys * _MIX) ^ tokens[ends - (n - 1) + j]
        unique, first_idx = np.unique(keys, return_index=True)
        index.first.update(zip(unique.tolist(), ends[first_idx].tolist(), strict=True))
        repeated = np.ones(len(ends), dtype=bool)
        repeated[first_idx] = False
        for key, end in zip(keys[repeated].tolist(), ends[repeated].tolist(), strict=True):
            index.later.setdefault(key, []).append(end)
