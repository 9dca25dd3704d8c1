"""One constrained sequence's place in its grammar.

Preemption by recompute keeps a sequence's tokens and recomputes only their KV, so the matcher,
which belongs to the request and not to its blocks, stays as it is. `rebuild` makes the same
state from the output tokens, for a caller that dropped the matcher (tests prove both agree).

Termination is kept here rather than asked of xgrammar: a matcher ends exactly when it accepts a
stop token (xgrammar's default, which __init__ keeps), and a call into xgrammar costs about
a microsecond and may hand the GIL to another thread, per row per step.
"""

from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr
import xgrammar.base


def _native_batch_accept() -> Any:
    """xgrammar's FFI function under `BatchGrammarMatcher.batch_accept_token`, or None if this
    xgrammar has moved it. The public wrapper turns the FFI's result into Python bools one FFI
    call per row, which costs more than the accepting itself at a step's batch sizes; the raw
    array answers `0 in result` in one native call, and a refused token is rare (the mask
    allows only what the grammar accepts)."""
    core = getattr(xgrammar.base, "_core", None)
    batch_matcher = getattr(core, "BatchGrammarMatcher", None)
    return getattr(batch_matcher, "batch_accept_token", None)


_NATIVE_BATCH_ACCEPT = _native_batch_accept()


class GrammarRejected(Exception):
    """A token the grammar does not allow reached a matcher: the mask was not applied."""


class SequenceMatcher:
    def __init__(self, grammar: xgr.CompiledGrammar) -> None:
        self._matcher = xgr.GrammarMatcher(grammar)
        self._handle = self._matcher._handle  # the FFI object, for _NATIVE_BATCH_ACCEPT
        self._stop_token_ids = frozenset(grammar.tokenizer_info.stop_token_ids)
        self.num_accepted_tokens = 0  # since the start, stop token included
        self._terminated = False

    @classmethod
    def rebuild(
        cls, grammar: xgr.CompiledGrammar, output_token_ids: Sequence[int]
    ) -> "SequenceMatcher":
        """The matcher after `output_token_ids`; raises GrammarRejected if they break it."""
        matcher = cls(grammar)
        matcher.accept(output_token_ids)
        return matcher

    @property
    def xgr_matcher(self) -> xgr.GrammarMatcher:
        """For xgrammar's batch calls (mask_filler.py)."""
        return self._matcher

    def accept(self, token_ids: Sequence[int]) -> None:
        """Advance past each token; raises GrammarRejected at the first one the grammar
        refuses, having accepted those before it."""
        for token_id in token_ids:
            if not self._matcher.accept_token(token_id):
                raise self.refusal(token_id)
            self._took(token_id)

    def _took(self, token_id: int) -> None:
        self.num_accepted_tokens += 1
        self._terminated = token_id in self._stop_token_ids

    def refusal(self, token_id: int) -> GrammarRejected:
        """The error for `token_id`, refused after the tokens accepted so far."""
        return GrammarRejected(
            f"token {token_id} is not allowed after {self.num_accepted_tokens} tokens"
        )

    def try_accept(self, token_id: int) -> bool:
        """Accept the token if the grammar allows it; whether it did."""
        accepted = bool(self._matcher.accept_token(token_id))
        if accepted:
            self._took(token_id)
        return accepted

    def rollback(self, num_tokens: int) -> None:
        """Forget the last `num_tokens` accepted (rejected speculative drafts)."""
        if not 0 <= num_tokens <= self.num_accepted_tokens:
            raise ValueError(
                f"cannot roll back {num_tokens} of {self.num_accepted_tokens} accepted tokens"
            )
        if num_tokens:
            self._matcher.rollback(num_tokens)
            self.num_accepted_tokens -= num_tokens
            self._terminated = False  # only a stop token ends a matcher, and nothing follows it

    def fill_row(self, bitmask: torch.Tensor, row: int) -> None:
        """bitmask[row] (int32 CPU, [rows, ceil(vocab / 32)]): bit t set where token t may come
        next."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    @staticmethod
    def try_accept_each(
        matchers: Sequence["SequenceMatcher"], token_ids: Sequence[int]
    ) -> list[bool]:
        """matchers[i].try_accept(token_ids[i]) for every i, in one call into xgrammar (a step's
        tokens, without a Python round trip per row)."""
        if _NATIVE_BATCH_ACCEPT is None:
            accepted = xgr.BatchGrammarMatcher.batch_accept_token(
                [m._matcher for m in matchers], list(token_ids)
            )
        else:
            verdicts = _NATIVE_BATCH_ACCEPT([m._handle for m in matchers], token_ids, False)
            accepted = [bool(v) for v in verdicts] if 0 in verdicts else [True] * len(matchers)
        for matcher, ok, token_id in zip(matchers, accepted, token_ids, strict=True):
            if ok:
                matcher._took(token_id)
        return accepted

    @property
    def is_terminated(self) -> bool:
        """It accepted a stop token: the output is complete and nothing may follow."""
        return self._terminated

    @property
    def is_completed(self) -> bool:
        """The tokens so far form a whole output (a stop token may come next, and perhaps more:
        digits after a number's last one)."""
        return bool(self._matcher.is_completed())
