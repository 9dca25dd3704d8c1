"""One step's grammar mask: which logits rows are constrained, their bitmask filled on the host
while the forward runs, and applied on the device before anything else touches the logits.

Rows follow the step's logits layout: an item that samples has `num_logits_rows` rows (one, or
k + 1 when it verifies k drafts). A constrained item's rows get the mask after each prefix of
its drafts (`fill_with_drafts`); unconstrained rows are neither copied nor touched. The mask
comes before penalties, temperature, top-k/p and min-p, so each of them works on what the
grammar allows, and logprobs are those of the masked distribution.

min_tokens and ignore_eos never force a token the grammar forbids: on a constrained row they
take the stop tokens out of the mask only while the grammar allows some other token, so a
grammar whose only continuation is its end still ends there (`stop`), min_tokens or not.
"""

from collections.abc import Iterable, Mapping
from concurrent.futures import Future

import numpy as np
import torch

from llm_worker.engine.request import Request
from llm_worker.engine.sampler import device_tensor
from llm_worker.engine.sequence import ScheduledSequence, Sequence
from llm_worker.kernels.token_bitmask import apply_token_bitmask_, apply_token_bitmask_reference
from llm_worker.schemas import SamplingParams
from llm_worker.structured.backend import StructuredOutputBackend
from llm_worker.structured.mask_filler import FilledRows
from llm_worker.structured.matcher import SequenceMatcher

BlockedRow = tuple[int, tuple[int, ...]]  # a bitmask row and the stop tokens it holds back


class StepMask:
    def __init__(
        self,
        filled: "Future[FilledRows]",  # [num_rows, words] int32 on the host, being filled
        seqs: list[Sequence],  # the constrained sequences, in matcher order
        row_idx: list[int],  # [num_rows]: the logits row each bitmask row masks
        blocked: list[BlockedRow],
        vocab_size: int,
    ) -> None:
        self._filled = filled
        self._seqs = seqs
        self.row_idx = row_idx
        self._blocked = blocked
        self._vocab_size = vocab_size
        # Set by apply_: sequences whose grammar could not fill their rows (left unmasked);
        # the step fails their requests, the others' rows stand.
        self.faults: dict[Sequence, str] = {}

    def apply_(self, logits: torch.Tensor) -> None:
        """logits: [rows, vocab] of the step (all its logits rows, in item order), masked in
        place. Waits for the fill."""
        filled = self._filled.result()
        self.faults = {self._seqs[i]: message for i, message in filled.failed.items()}
        bitmask = filled.bitmask
        for row, token_ids in self._blocked:
            _hold_back(bitmask[row], token_ids, self._vocab_size)
        device = logits.device
        row_idx = device_tensor(self.row_idx, device, torch.int32)
        with torch.inference_mode():  # the logits may be an inference tensor (the runner's)
            self._apply_rows(logits, bitmask, row_idx)

    def _apply_rows(
        self, logits: torch.Tensor, bitmask: torch.Tensor, row_idx: torch.Tensor
    ) -> None:
        device = logits.device
        if device.type == "cuda":
            # Non-blocking from the filler's pinned buffer: every fill starts after the step in
            # flight was drained, so the next one waits for this step's tokens to reach the
            # host, which is after this copy in stream order.
            rows = bitmask.to(device, non_blocking=True)
            apply_token_bitmask_(logits, rows, row_idx, self._vocab_size)
        else:
            apply_token_bitmask_reference(logits, bitmask, row_idx, self._vocab_size)

    def settle(self) -> None:
        """Wait for the fill, whatever it raised: after a failed step, the matchers must be
        quiet before anyone touches them again."""
        self._filled.exception()


def plan_step_mask(
    scheduled: list[ScheduledSequence],
    requests: Mapping[str, Request],
    backend: StructuredOutputBackend,
    eos_token_ids: tuple[int, ...],
) -> StepMask | None:
    """Start filling the mask of a step whose items are final (drafts included); None when
    no row that samples is constrained. The constrained sequences' tokens must all be on the
    host (no placeholder in flight). A grammar that has ended (the sequence finishes on the
    token just taken, and this row is never used) gets no row: it has no next token."""
    seqs: list[Sequence] = []
    matchers: list[SequenceMatcher] = []
    drafts: list[tuple[int, ...]] = []
    row_idx: list[int] = []
    blocked: list[BlockedRow] = []
    first = 0
    for item in scheduled:
        num_rows = item.num_logits_rows
        if not num_rows:
            continue
        seq = item.seq
        request = requests.get(seq.request_id)
        matcher = request.matcher if request is not None else None
        if matcher is not None and not matcher.is_terminated:
            assert request is not None and request.seq is seq and num_rows == item.num_spec + 1
            seqs.append(seq)
            matchers.append(matcher)
            drafts.append(item.spec_token_ids)
            for j in range(num_rows):
                held = _held_back(seq.params, seq.num_output_tokens + j, eos_token_ids)
                if held:
                    blocked.append((len(row_idx), held))
                row_idx.append(first + j)
        first += num_rows
    if not matchers:
        return None
    filled = backend.fill_in_background(matchers, drafts)
    return StepMask(filled, seqs, row_idx, blocked, backend.vocab.vocab_size)


def _held_back(
    params: SamplingParams, num_output_tokens: int, eos_token_ids: Iterable[int]
) -> tuple[int, ...]:
    """The stop tokens a constrained row holds back while the grammar allows anything else:
    every stop under min_tokens, EOS with ignore_eos."""
    if num_output_tokens < params.min_tokens:
        return (*params.stop_token_ids, *eos_token_ids)
    return tuple(eos_token_ids) if params.ignore_eos else ()


def _hold_back(row: torch.Tensor, token_ids: tuple[int, ...], vocab_size: int) -> None:
    """Clear the bits of `token_ids` in a bitmask row (int32 [words], on the host) unless that
    would leave no token allowed."""
    words = row.numpy().view(np.uint32)
    kept = words.copy()
    for token_id in token_ids:
        if token_id < vocab_size:
            kept[token_id // 32] &= ~np.uint32(1 << (token_id % 32))
    if kept.any():
        words[:] = kept


def samples_under_grammar(
    scheduled: list[ScheduledSequence], requests: Mapping[str, Request]
) -> bool:
    """Some item of the step samples under a grammar."""
    for item in scheduled:
        request = requests.get(item.seq.request_id)
        if item.num_logits_rows and request is not None and request.matcher is not None:
            return True
    return False
