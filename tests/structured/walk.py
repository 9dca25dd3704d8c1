"""Random walks through a grammar: each step draws a token the matcher's bitmask allows.

Drawing uniformly from the whole mask rarely ends a JSON string (few of 49,152 tokens hold a
quote), so with probability `prefer_p` the draw is uniform over the allowed tokens that hold a
closing character (`"`, `}`, `]`, `,`, and the `@` that
ends an email's local part) or are stop tokens, when there are any. Both draws only
ever take tokens the mask allows, so every walk is a path the engine could take.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.vocab import GrammarVocab

CLOSING_BYTES = (b'"', b"}", b"]", b",", b"@")


@dataclass(frozen=True)
class Walk:
    token_ids: list[int]  # the stop token last when terminated
    terminated: bool


def allowed_token_ids(row: torch.Tensor, vocab_size: int) -> np.ndarray:
    """The token ids whose bit is set in one int32 bitmask row (little-endian words)."""
    bits = np.unpackbits(row.numpy().view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits)


@dataclass(frozen=True)
class Walker:
    vocab: GrammarVocab
    token_bytes: list[bytes]  # what each token id spells, as the grammar sees it
    preferred: np.ndarray  # [vocab_size] bool: closing tokens and stop tokens

    @classmethod
    def of(cls, vocab: GrammarVocab) -> "Walker":
        token_bytes = list(vocab.info.decoded_vocab)
        preferred = np.zeros(vocab.vocab_size, dtype=bool)
        for token_id, text in enumerate(token_bytes[: vocab.vocab_size]):
            preferred[token_id] = any(c in text for c in CLOSING_BYTES)
        preferred[list(vocab.stop_token_ids)] = True
        return cls(vocab, token_bytes, preferred)

    def walk(
        self,
        matcher: SequenceMatcher,
        rng: np.random.Generator,
        max_tokens: int,
        prefer_p: float = 0.8,
    ) -> Walk:
        bitmask = torch.empty((1, self.vocab.num_bitmask_words), dtype=torch.int32)
        token_ids: list[int] = []
        for _ in range(max_tokens):
            matcher.fill_row(bitmask, 0)
            allowed = allowed_token_ids(bitmask[0], self.vocab.vocab_size)
            assert allowed.size, f"a live matcher allowed nothing after {token_ids}"
            closing = allowed[self.preferred[allowed]]
            pool = closing if closing.size and rng.random() < prefer_p else allowed
            token_id = int(rng.choice(pool))
            matcher.accept([token_id])
            token_ids.append(token_id)
            if matcher.is_terminated:
                return Walk(token_ids, True)
        return Walk(token_ids, False)

    def text(self, walk: Walk, tokenizer: Any) -> str:
        """The output without its stop token as the tokenizer decodes it (as the engine's
        detokenizer does), checked against the bytes the grammar saw."""
        body = [t for t in walk.token_ids if t not in self.vocab.stop_token_ids]
        text: str = tokenizer.decode(body, skip_special_tokens=True)
        assert text.encode() == b"".join(self.token_bytes[t] for t in body), body
        return text
