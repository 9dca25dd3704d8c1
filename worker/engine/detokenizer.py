"""Incremental detokenization and stop-string matching for one sequence."""

from typing import Any


class IncrementalDetokenizer:
    """Decodes only a short window per token, so a long output costs O(n), not O(n^2).

    The window starts at the previous emission boundary; text is emitted once it is longer than
    the window's old text and does not end in a partial UTF-8 character.
    """

    def __init__(self, tokenizer: Any, stop: list[str], include_stop: bool) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.include_stop = include_stop
        self.max_stop_len = max((len(s) for s in stop), default=0)
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> bool:
        """Add a token; True when a stop string matched (self.text is then cut)."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix_text = decode(
            self.ids[self._prefix_offset : self._read_offset], skip_special_tokens=True
        )
        new_text = decode(self.ids[self._prefix_offset :], skip_special_tokens=True)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return False
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.ids)
        self.text += delta
        return self._check_stop(len(delta))

    def _check_stop(self, delta_len: int) -> bool:
        if not self.stop:
            return False
        window_start = max(0, len(self.text) - delta_len - self.max_stop_len + 1)
        for stop in self.stop:
            idx = self.text.find(stop, window_start)
            if idx != -1:
                self.text = self.text[: idx + len(stop)] if self.include_stop else self.text[:idx]
                return True
        return False
