"""The grammar backend as the engine uses it: submit a request's constraint, make its matcher
when the grammar is ready, fill a step's bitmask, read the counters.

    backend = StructuredOutputBackend.create(tokenizer, vocab_size, eos_token_ids, config)
    pending = backend.submit(params.structured_outputs)   # add_request; returns at once
    ...                                                   # each step, until pending.done()
    matcher = backend.matcher(pending)                    # raises StructuredOutputError
    filled = backend.fill_in_background(matchers, drafts)  # while the forward runs
    rows = filled.result()  # FilledRows: the bitmask, and the matchers whose fill raised
    apply_token_bitmask_(logits, rows.bitmask.to(device), row_idx, backend.vocab.vocab_size)
    matcher.accept([token_id]); matcher.is_terminated     # after sampling
"""

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler, PendingGrammar
from llm_worker.structured.mask_filler import FilledRows, MaskFiller
from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.stats import StatsRecorder, StructuredStats
from llm_worker.structured.vocab import GrammarVocab, grammar_vocab


@dataclass(frozen=True)
class StructuredOutputConfig:
    max_rows: int  # constrained positions in one step: max_num_seqs x (k + 1) when speculating
    max_cached_grammars: int = 512
    num_compile_threads: int = 2
    # One: a row of a JSON schema fills in about 1-2 us, so a step's rows take well under a
    # millisecond on one thread, while xgrammar's pool costs more than that to wake at a step's
    # batch sizes (scripts/bench_structured.py mask --fill-threads; "auto" is half the cores).
    num_fill_threads: int | Literal["auto"] = 1
    pin_memory: bool = False  # True on CUDA hosts: the bitmask copies to the device async


class StructuredOutputBackend:
    def __init__(self, vocab: GrammarVocab, config: StructuredOutputConfig) -> None:
        self.vocab = vocab
        self._stats = StatsRecorder()
        self.compiler = GrammarCompiler(
            vocab,
            self._stats,
            max_cached_grammars=config.max_cached_grammars,
            num_threads=config.num_compile_threads,
        )
        self.filler = MaskFiller(
            vocab.vocab_size,
            config.max_rows,
            self._stats,
            num_threads=config.num_fill_threads,
            pin_memory=config.pin_memory,
        )
        # One thread: a step's fill is one batch call (xgrammar spreads it over its own
        # threads), and it must not queue behind a slow compilation.
        self._fill_pool = ThreadPoolExecutor(1, "mask-fill")

    @classmethod
    def create(
        cls,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: Sequence[int],
        config: StructuredOutputConfig,
    ) -> "StructuredOutputBackend":
        """Raises NoTokenizerError for a model without a tokenizer: the engine then refuses
        constrained requests with it (invalid_request) and serves the rest."""
        return cls(grammar_vocab(tokenizer, vocab_size, stop_token_ids), config)

    def submit(self, constraint: StructuredOutputs) -> PendingGrammar:
        return self.compiler.submit(constraint)

    def matcher(self, pending: PendingGrammar) -> SequenceMatcher:
        """A fresh matcher once `pending.done()`; raises the StructuredOutputError that
        refused the constraint."""
        return SequenceMatcher(pending.result())

    def fill_in_background(
        self, matchers: Sequence[SequenceMatcher], drafts: Sequence[Sequence[int]]
    ) -> "Future[FilledRows]":
        """`filler.fill_with_drafts(matchers, drafts)` on the fill thread, which releases the
        GIL while it fills: the caller runs the forward meanwhile. Until the future is done,
        nothing else may touch these matchers or the filler's bitmask.

        Returns once the fill is inside xgrammar. A thread waiting for the GIL gets it only
        when its holder blocks or after the switch interval (5 ms), longer than a step's
        host work: without the wait, the fill would start when the caller next blocks, on its
        result, and run after the caller's work instead of beside it."""
        entered = threading.Event()
        filled = self._fill_pool.submit(self.filler.fill_with_drafts, matchers, drafts, entered.set)
        filled.add_done_callback(lambda _: entered.set())  # raised or cancelled before xgrammar
        entered.wait()
        return filled

    def stats(self) -> StructuredStats:
        return self._stats.snapshot()

    def shutdown(self) -> None:
        self.compiler.shutdown()
        self._fill_pool.shutdown(wait=False, cancel_futures=True)
