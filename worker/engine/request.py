"""A request around its sequence: what it needs besides tokens, and what it gives back."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_worker.engine.detokenizer import IncrementalDetokenizer
from llm_worker.engine.sequence import SampledToken, Sequence, SequenceMetrics

if TYPE_CHECKING:  # the grammar backend pulls in xgrammar and torch; requests need neither
    from llm_worker.structured.compiler import PendingGrammar
    from llm_worker.structured.matcher import SequenceMatcher


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    text: str | None
    # stop, length, abort, or internal_error / invalid_request (see `error`)
    finish_reason: str | None
    num_cached_tokens: int
    metrics: SequenceMetrics
    logprobs: list[SampledToken] | None = None
    finished: bool = True
    error: str | None = None  # why the engine failed this request (the finish reason's code)


@dataclass
class Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer | None  # None: the model has no tokenizer
    generator: Any  # a torch.Generator of its own, for seeded sampling; None: unseeded
    logprobs: list[SampledToken] | None  # None: not asked for
    error: str | None = None
    # Structured outputs: the grammar being compiled (None: unconstrained), then, once it is
    # compiled and the request is scheduled, its matcher, advanced past every output token.
    grammar: "PendingGrammar | None" = None
    matcher: "SequenceMatcher | None" = None

    def output(self) -> RequestOutput:
        seq = self.seq
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            output_token_ids=seq.output_token_ids,
            text=self.detokenizer.text if self.detokenizer is not None else None,
            finish_reason=seq.finish_reason,
            num_cached_tokens=seq.num_cached_tokens,
            metrics=seq.metrics,
            logprobs=self.logprobs,
            error=self.error,
        )


def new_request(
    seq: Sequence, tokenizer: Any, generator: Any, grammar: "PendingGrammar | None" = None
) -> Request:
    """`tokenizer`: None for a model without one; `generator`: the request's own, if seeded;
    `grammar`: its constraint's compilation, if constrained."""
    p = seq.params
    detokenizer = None
    if tokenizer is not None:
        detokenizer = IncrementalDetokenizer(tokenizer, p.stop, p.include_stop_str_in_output)
    logprobs: list[SampledToken] | None = [] if p.logprobs is not None else None
    return Request(seq, detokenizer, generator, logprobs, grammar=grammar)
