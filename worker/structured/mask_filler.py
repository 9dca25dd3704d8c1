"""A step's next-token bitmask: one row per constrained sampling position, filled in parallel.

Rows are compact: row i is for the i-th matcher given (the engine keeps which logits row each
one masks), so only constrained rows cross to the device. xgrammar's batch fill runs on its own
threads with the GIL released, so the engine thread's other host work can run beside it.
"""

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import xgrammar as xgr

from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.stats import StatsRecorder

ALL_ALLOWED = -1  # an int32 word with every bit set


@dataclass(frozen=True)
class FilledRows:
    bitmask: torch.Tensor  # [rows, words] int32, a view of the filler's buffer
    failed: dict[int, str]  # matcher index -> why its fill raised (its rows allow everything)


class MaskFiller:
    def __init__(
        self,
        vocab_size: int,
        max_rows: int,
        stats: StatsRecorder,
        *,
        num_threads: int | Literal["auto"] = "auto",
        pin_memory: bool = False,
    ) -> None:
        """`max_rows`: the most constrained positions of one step (max_num_seqs, times k + 1
        with speculative decoding). `pin_memory` (CUDA hosts) lets the copy to the device run
        asynchronously."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        num_words = (vocab_size + 31) // 32
        # bitmask: [max_rows, ceil(vocab / 32)] int32; bit t % 32 of word t // 32 is token t
        self.bitmask = torch.full(
            (max_rows, num_words), ALL_ALLOWED, dtype=torch.int32, pin_memory=pin_memory
        )
        self._batch = xgr.BatchGrammarMatcher(num_threads)
        self._stats = stats

    @property
    def max_rows(self) -> int:
        return self.bitmask.shape[0]

    def fill(self, matchers: Sequence[SequenceMatcher]) -> torch.Tensor:
        """Rows [0, len(matchers)) of the bitmask, row i for matchers[i]; a view of the buffer,
        valid until the next fill."""
        self._check_capacity(len(matchers))
        started = time.perf_counter()
        self._fill_rows([m.xgr_matcher for m in matchers], None)
        self._stats.filled(len(matchers), time.perf_counter() - started)
        return self.bitmask[: len(matchers)]

    def fill_with_drafts(
        self,
        matchers: Sequence[SequenceMatcher],
        drafts: Sequence[Sequence[int]],
        on_enter: Callable[[], None] | None = None,
    ) -> FilledRows:
        """Rows for speculative verification: matchers[i] gets len(drafts[i]) + 1 consecutive
        rows, the mask after each prefix of its drafts (the layout of the verify logits).
        Rows after a draft the grammar refuses (or after a stop token) allow everything: the
        target's masked distribution gives a refused draft probability 0, so verification
        stops there and those rows are never sampled from. Every matcher is left as it was.

        A matcher whose fill raises (a grammar backend fault) gets rows that allow everything
        and is named in `failed`: the caller fails its request, the other rows stand.
        `on_enter` is called just before the first call into xgrammar."""
        if len(matchers) != len(drafts):
            raise ValueError(f"{len(matchers)} matchers but {len(drafts)} draft lists")
        speculating = any(drafts)
        if speculating:
            first_row = [0]
            for tokens in drafts:
                first_row.append(first_row[-1] + len(tokens) + 1)
        else:
            first_row = list(range(len(matchers) + 1))
        num_rows = first_row[-1]
        self._check_capacity(num_rows)
        started = time.perf_counter()
        failed: dict[int, str] = {}
        try:
            if speculating:
                self._fill_group(matchers, drafts, first_row, range(len(matchers)), on_enter)
            else:  # one row each, the common step: as little Python as possible before it
                handles = [m.xgr_matcher for m in matchers]
                if on_enter is not None:
                    on_enter()
                self._fill_rows(handles, None)
        except Exception:  # the batch call cannot say which matcher raised: each alone
            for i in range(len(matchers)):
                try:
                    self._fill_group(matchers, drafts, first_row, [i])
                except Exception as exc:
                    failed[i] = f"grammar mask: {type(exc).__name__}: {exc}"
                    self.bitmask[first_row[i] : first_row[i + 1]] = ALL_ALLOWED
        self._stats.filled(num_rows, time.perf_counter() - started)
        return FilledRows(self.bitmask[:num_rows], failed)

    def _fill_group(
        self,
        matchers: Sequence[SequenceMatcher],
        drafts: Sequence[Sequence[int]],
        first_row: list[int],
        group: Iterable[int],
        on_enter: Callable[[], None] | None = None,
    ) -> None:
        """Fill the rows of matchers[i] for each i in `group`, depth by depth (one batch call
        per depth), accepting drafts as it goes and rolling them all back at the end."""
        num_accepted = dict.fromkeys(group, 0)
        live = list(num_accepted)
        try:
            for depth in range(max((len(drafts[i]) for i in live), default=0) + 1):
                live = [i for i in live if depth <= len(drafts[i])]
                handles = [matchers[i].xgr_matcher for i in live]
                rows = [first_row[i] + depth for i in live]
                if depth == 0 and on_enter is not None:
                    on_enter()
                self._fill_rows(handles, rows)
                live = [i for i in live if depth < len(drafts[i])]
                for i in list(live):
                    accepted = matchers[i].try_accept(drafts[i][depth])
                    num_accepted[i] += int(accepted)
                    if not accepted or matchers[i].is_terminated:  # nothing follows a stop
                        live.remove(i)
                        self.bitmask[first_row[i] + depth + 1 : first_row[i + 1]] = ALL_ALLOWED
        finally:
            for i, n in num_accepted.items():
                matchers[i].rollback(n)

    def _fill_rows(self, handles: list[xgr.GrammarMatcher], rows: list[int] | None) -> None:
        """handles[i] fills bitmask row rows[i] (None: row i)."""
        if handles:
            self._batch.batch_fill_next_token_bitmask(handles, self.bitmask, rows)

    def _check_capacity(self, num_rows: int) -> None:
        if num_rows > self.max_rows:
            raise ValueError(f"{num_rows} constrained rows, over the {self.max_rows} allocated")
