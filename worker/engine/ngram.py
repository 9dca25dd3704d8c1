"""Prompt-lookup (n-gram) drafts: continue the sequence the way it went after an earlier copy of
its last n tokens.

Each sequence keeps a map from every n-gram (for each n in [min_n, max_n]) to where it first
ended. The map grows by a constant amount of work per appended token, so a step costs O(max_n)
whatever the sequence length: there is no rescan of a long prompt on every step. The first
occurrence is kept because it leaves the longest continuation to copy from.
"""

from dataclasses import dataclass, field


@dataclass
class _Index:
    first_end: dict[tuple[int, ...], int] = field(default_factory=dict)  # n-gram -> end index
    num_indexed: int = 0  # token_ids[:num_indexed] are in first_end
    # For each n, where the current suffix's n-gram first ended before the suffix itself.
    suffix_match: dict[int, int] = field(default_factory=dict)


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
        self._extend(index, token_ids)
        for n in range(self.max_n, self.min_n - 1, -1):
            end = index.suffix_match.get(n)
            if end is not None:
                return token_ids[end + 1 : end + 1 + k]
        return []

    def forget(self, key: str) -> None:
        self._indexes.pop(key, None)

    def _extend(self, index: _Index, token_ids: list[int]) -> None:
        first_end = index.first_end
        for i in range(index.num_indexed, len(token_ids)):
            index.suffix_match.clear()
            for n in range(self.min_n, min(self.max_n, i + 1) + 1):
                gram = tuple(token_ids[i - n + 1 : i + 1])
                earlier = first_end.setdefault(gram, i)
                if earlier != i:
                    index.suffix_match[n] = earlier
        index.num_indexed = len(token_ids)
