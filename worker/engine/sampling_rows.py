"""How each sequence picks its next token, as rows the sampler applies: the request's params,
its token history, the tokens min_tokens still blocks, its own generator if seeded."""

from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq

from llm_worker.engine.request import Request
from llm_worker.engine.sampler import SamplingRow
from llm_worker.engine.sequence import ScheduledSequence, Sequence


class SamplingRows:
    def __init__(self, requests: Mapping[str, Request], eos_token_ids: Iterable[int]) -> None:
        self.requests = requests  # read only: update owns them
        self.eos_token_ids = tuple(eos_token_ids)

    def row(self, seq: Sequence, drafts: Seq[int] = ()) -> SamplingRow:
        """How to pick the token after seq.token_ids followed by `drafts`."""
        p = seq.params
        request = self.requests[seq.request_id]
        blocked: tuple[int, ...] = ()
        # A constrained row's stops are held back in its mask instead (step_mask.py), where
        # they stay allowed when the grammar allows nothing else.
        if request.matcher is None and seq.num_output_tokens + len(drafts) < p.min_tokens:
            blocked = tuple(p.stop_token_ids) + (() if p.ignore_eos else self.eos_token_ids)
        history = seq.token_ids
        if drafts and p.needs_penalties:  # only penalties read the history
            history = [*seq.token_ids, *drafts]
        return SamplingRow(
            params=p,
            token_ids=history,
            num_prompt_tokens=seq.num_prompt_tokens,
            generator=request.generator,
            blocked_token_ids=blocked,
        )

    def of_step(self, scheduled: list[ScheduledSequence]) -> list[SamplingRow]:
        """One row per item that samples, in item order."""
        return [self.row(item.seq) for item in scheduled if item.samples]

    def verifying(self, seq: Sequence, drafts: Seq[int]) -> list[SamplingRow]:
        """k + 1 rows for verifying k drafts: row j picks the token after drafts[:j]."""
        return [self.row(seq, drafts[:j]) for j in range(len(drafts) + 1)]
