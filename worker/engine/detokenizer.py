"""Incremental detokenization and stop-string matching for one sequence."""

from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

# Spaces before punctuation, which transformers' clean-up removes: where the tokenizer's decode
# and its backend's agree on this text, the clean-up does not run.
CLEAN_UP_PROBE = "a . b , c ! d ? e"


class IncrementalDetokenizer:
    """Decodes only a short window per token, so a long output costs O(n), not O(n^2).

    With a fast (`tokenizers`) tokenizer whose decode is its backend's, the backend's
    DecodeStream does it in Rust, skipping two decodes a token through transformers' Python
    (a step pays this once per row); otherwise the window starts at the previous emission
    boundary, and text is emitted once it is longer than the window's old text and does not end
    in a partial UTF-8 character. Through the stream, the text is the tokenizer's decode of
    the output with special tokens skipped.
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
        self._stream_step = stream_step(tokenizer)

    def push(self, token_id: int) -> bool:
        """Add a token; True when a stop string matched (self.text is then cut)."""
        self.ids.append(token_id)
        if self._stream_step is not None:
            delta = self._stream_step(token_id)
        else:
            delta = self._window_delta()
        if not delta:
            return False
        self.text += delta
        return self._check_stop(len(delta))

    def _window_delta(self) -> str | None:
        decode = self.tokenizer.decode
        prefix_text = decode(
            self.ids[self._prefix_offset : self._read_offset], skip_special_tokens=True
        )
        new_text = decode(self.ids[self._prefix_offset :], skip_special_tokens=True)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return None
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.ids)
        return new_text[len(prefix_text) :]

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


def stream_step(tokenizer: Any) -> Callable[[int], str | None] | None:
    """A fresh DecodeStream's step over the tokenizer's backend, or None where the tokenizer's
    decode is not exactly its backend's."""
    try:
        streams = _decodes_as_backend(tokenizer)
    except TypeError:  # an unhashable tokenizer object: no cache, no stream
        return None
    if not streams:
        return None
    from tokenizers.decoders import DecodeStream

    return partial(DecodeStream(skip_special_tokens=True).step, tokenizer.backend_tokenizer)


@lru_cache(maxsize=16)  # per tokenizer object: the probe costs tens of microseconds
def _decodes_as_backend(tokenizer: Any) -> bool:
    """Not for a slow tokenizer, a class that decodes its own way, or where transformers'
    clean-up of spaces before punctuation is in effect (on, and not skipped as it is for BPE
    models: the probe finds out whether it runs)."""
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream  # noqa: F401  (tokenizers >= 0.21)
    except ImportError:
        return False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer) or not _decodes_through_backend(type(tokenizer)):
        return False
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        ids = backend.encode(CLEAN_UP_PROBE, add_special_tokens=False).ids
        raw = backend.decode(ids, skip_special_tokens=True)
        return " ." in raw and tokenizer.decode(ids, skip_special_tokens=True) == raw
    return True


def _decodes_through_backend(cls: type) -> bool:
    """`cls` keeps the decode of transformers' fast-tokenizer base, which is the backend's
    decode, then the clean-up if it is on."""
    bases = []
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        bases.append(TokenizersBackend)
    except ImportError:
        pass
    try:
        from transformers import PreTrainedTokenizerFast

        bases.append(PreTrainedTokenizerFast)
    except ImportError:
        pass
    return any(
        issubclass(cls, base) and cls._decode is base._decode and cls.decode is base.decode
        for base in bases
    )
