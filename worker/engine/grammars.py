"""Structured outputs as the engine runs them: a constrained request's grammar is compiled off
the engine thread, the request joins the scheduler once it is ready, and each step's
constrained rows get their mask (step_mask.py).

A request waits for its grammar in update's `compiling` list, never in the scheduler, so the
jobs already running keep running; a grammar that cannot compile fails its request alone with
`invalid_request`, naming the problem.
"""

from collections.abc import Iterable, Mapping

from llm_worker.engine.request import Request
from llm_worker.engine.scheduler import RequestRejected
from llm_worker.engine.sequence import ScheduledSequence, Sequence
from llm_worker.engine.step_mask import StepMask, plan_step_mask, samples_under_grammar
from llm_worker.schemas import ErrorCode, SamplingParams
from llm_worker.structured.backend import StructuredOutputBackend
from llm_worker.structured.compiler import PendingGrammar, wait_for_any
from llm_worker.structured.errors import NoTokenizerError, StructuredOutputError
from llm_worker.structured.matcher import SequenceMatcher

NO_TOKENIZER = NoTokenizerError("structured outputs need the model's tokenizer; this one has none")


class Grammars:
    def __init__(
        self,
        backend: StructuredOutputBackend | None,  # None: the model has no tokenizer
        requests: Mapping[str, Request],  # read only: update owns them
        eos_token_ids: tuple[int, ...],
    ) -> None:
        self.backend = backend
        self.requests = requests
        self.eos_token_ids = eos_token_ids

    def submit(self, params: SamplingParams) -> PendingGrammar | None:
        """Start compiling a request's constraint (None: it has none); RequestRejected when
        this engine cannot serve constraints."""
        constraint = params.structured_outputs
        if constraint is None:
            return None
        if self.backend is None:
            raise RequestRejected(ErrorCode.INVALID, NO_TOKENIZER.message)
        try:
            return self.backend.submit(constraint)
        except StructuredOutputError as exc:
            raise RequestRejected(ErrorCode.INVALID, exc.message) from exc

    def compiled(
        self, compiling: Iterable[Request]
    ) -> list[tuple[Request, SequenceMatcher | StructuredOutputError]]:
        """Of requests waiting for their grammars, those whose grammar is done: each with its
        matcher, or the error that refused its constraint."""
        done: list[tuple[Request, SequenceMatcher | StructuredOutputError]] = []
        for request in compiling:
            if request.grammar is None or not request.grammar.done():
                continue
            assert self.backend is not None
            try:
                done.append((request, self.backend.matcher(request.grammar)))
            except StructuredOutputError as exc:
                done.append((request, exc))
        return done

    def wait_for_compiles(self, compiling: Iterable[Request], timeout_s: float) -> None:
        """With nothing to run but requests waiting for their grammars: wait a little for one,
        instead of spinning through empty steps."""
        pending = [r.grammar for r in compiling if r.grammar is not None]
        if pending:
            wait_for_any(pending, timeout_s)

    def any_constrained(self, seqs: list[Sequence]) -> bool:
        return any(self.requests[s.request_id].matcher is not None for s in seqs)

    def constrains(self, scheduled: list[ScheduledSequence]) -> bool:
        """Some row of the step samples under a grammar (its mask needs every token of its
        sequence on the host)."""
        return self.backend is not None and samples_under_grammar(scheduled, self.requests)

    def step_mask(self, scheduled: list[ScheduledSequence]) -> StepMask | None:
        """Start filling the step's mask (its items final, drafts included); None: no
        constrained row samples."""
        if self.backend is None:
            return None
        return plan_step_mask(scheduled, self.requests, self.backend, self.eos_token_ids)

    def shutdown(self) -> None:
        if self.backend is not None:
            self.backend.shutdown()
