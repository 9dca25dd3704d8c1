"""The model's vocabulary as xgrammar sees it, and a fingerprint that names it in cache keys."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import xgrammar as xgr

from llm_worker.structured.errors import NoTokenizerError


@dataclass(frozen=True)
class GrammarVocab:
    info: xgr.TokenizerInfo
    vocab_size: int  # tokens a bitmask row covers: the model's logits width, not the tokenizer's
    stop_token_ids: tuple[int, ...]  # what ends a constrained output: the engine's EOS ids
    fingerprint: str  # sha256 of the decoded vocabulary, its size, type and stop tokens

    @property
    def num_bitmask_words(self) -> int:
        return (self.vocab_size + 31) // 32


def grammar_vocab(tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> GrammarVocab:
    """`vocab_size` is the model's (its logits width): ids the tokenizer lacks (padding in the
    embedding) are never allowed. `stop_token_ids` are the engine's EOS ids, not the
    tokenizer's own eos_token_id (the bundled SmolLM2's names <|im_start|>)."""
    if tokenizer is None:
        raise NoTokenizerError("structured outputs need the model's tokenizer; this model has none")
    if not stop_token_ids:
        raise ValueError("a grammar vocabulary needs at least one stop token id")
    stops = tuple(stop_token_ids)
    detected = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=list(stops)
    )
    # The engine decodes with skip_special_tokens, so a special token (SmolLM2's <issue_closed>,
    # ...) would vanish from the text the grammar counted it in: an empty string makes xgrammar
    # treat it as special and never allow it. Stop tokens are allowed by id all the same.
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    encoded = [""] * vocab_size
    for token, token_id in tokenizer.get_vocab().items():
        if token_id < vocab_size and token_id not in special:
            encoded[token_id] = token
    info = xgr.TokenizerInfo(
        encoded,
        detected.vocab_type,
        vocab_size=vocab_size,
        stop_token_ids=list(stops),
        add_prefix_space=detected.add_prefix_space,
    )
    digest = hashlib.sha256()
    digest.update(f"{info.vocab_type.name}:{vocab_size}:{stops}".encode())
    for token in info.decoded_vocab:
        digest.update(len(token).to_bytes(4, "little"))
        digest.update(token)
    return GrammarVocab(info, vocab_size, stops, digest.hexdigest())
