"""Between the wire and the engine: a Job becomes token ids + params; an output becomes a Result.

Shared by every intake path (run-batch, Redis, Kafka) so they fail and succeed identically.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_worker.engine.llm_engine import RequestOutput
from llm_worker.schemas import (
    ErrorCode,
    ErrorInfo,
    Job,
    JobStatus,
    Result,
    SamplingParams,
    Timings,
    Usage,
)
from llm_worker.schemas.result import TokenLogprob
from llm_worker.schemas.structured import StructuredOutputs, constraint_for, parsed_output


class JobError(Exception):
    """A job that cannot run; becomes a `failed` Result with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ServedModel:
    """What admission checks a job against: the name jobs may ask for, the tokenizer (None for
    a model without one) and the vocabulary every token id must fall in."""

    name: str
    tokenizer: Any
    vocab_size: int


def default_seed(job_id: str) -> int:
    """The seed of a sampled job that names none: a job that runs twice (its worker died after
    the first run, or a lease moved) then draws the same tokens, so a duplicate is identical."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "little")


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Render the model's chat template, then tokenize the text (the template adds any BOS)."""
    if tokenizer.chat_template is None:
        raise JobError(ErrorCode.INVALID, "this model has no chat template; send prompt instead")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def batch_file_prompt_ids(tokenizer: Any, path: Path) -> list[list[int]]:
    """Each request's prompt token ids in an OpenAI batch file of our own (examples/prompts.jsonl
    for benches and tests): chat messages through the chat template, a prompt as it is. Strict
    parsing and limits are run-batch's (openai_batch.parse_line); this trusts the file."""
    prompts = []
    for line in path.read_text().splitlines():
        body = json.loads(line)["body"]
        if "messages" in body:
            prompts.append(chat_prompt_ids(tokenizer, body["messages"]))
        else:
            prompts.append(list(tokenizer.encode(body["prompt"])))
    return prompts


def prepare_job(job: Job, served: ServedModel) -> tuple[list[int], SamplingParams]:
    """The job's prompt token ids and sampling params, or JobError saying why it cannot run."""
    if job.model is not None and job.model != served.name:
        raise JobError(
            ErrorCode.UNKNOWN_MODEL,
            f"model {job.model!r} is not served here; this worker serves {served.name!r}",
        )
    params = job.sampling
    _check_token_ids(params.stop_token_ids, "stop_token_ids", served.vocab_size)
    if params.seed is None and not params.is_greedy:
        params = params.model_copy(update={"seed": default_seed(job.id)})
    constraint = job_constraint(job)
    if constraint is not None:
        if served.tokenizer is None:
            raise JobError(
                ErrorCode.INVALID,
                f"structured outputs ({constraint.kind}) need the model's tokenizer; this model "
                "has none",
            )
        params = params.model_copy(update={"structured_outputs": constraint})
    if job.prompt_token_ids is not None:
        _check_token_ids(job.prompt_token_ids, "prompt_token_ids", served.vocab_size)
        return list(job.prompt_token_ids), params
    if served.tokenizer is None:
        raise JobError(ErrorCode.INVALID, "this model has no tokenizer; send prompt_token_ids")
    try:
        if job.messages is not None:
            ids = chat_prompt_ids(served.tokenizer, [m.model_dump() for m in job.messages])
        else:
            ids = list(served.tokenizer.encode(job.prompt))
    except JobError:
        raise
    except Exception as exc:  # a template or tokenizer error fails this job, not its batch
        raise JobError(ErrorCode.INVALID, f"the prompt cannot be tokenized: {exc!r}"[:500]) from exc
    if not ids:
        raise JobError(ErrorCode.INVALID, "the prompt encodes to no tokens")
    return ids, params


def job_constraint(job: Job) -> StructuredOutputs | None:
    """What the job's output must match: its response_format or sampling.structured_outputs."""
    return constraint_for(job.response_format, job.sampling.structured_outputs)


def _check_token_ids(token_ids: list[int], field: str, vocab_size: int) -> None:
    bad = next((t for t in token_ids if t >= vocab_size), None)
    if bad is not None:
        raise JobError(ErrorCode.INVALID,
                       f"{field}: token id {bad} outside the vocabulary (0..{vocab_size - 1})")


def _timings(out: RequestOutput) -> Timings:
    m = out.metrics
    end = m.finished_time or time.monotonic()
    ttft = (m.first_token_time - m.arrival_time) if m.first_token_time else None
    n = len(out.output_token_ids)
    tpot = (end - m.first_token_time) / (n - 1) if m.first_token_time and n > 1 else None
    queue = (m.first_scheduled_time - m.arrival_time) if m.first_scheduled_time else None
    return Timings(queue_s=queue, ttft_s=ttft, tpot_s=tpot, e2e_s=end - m.arrival_time)


@dataclass(frozen=True)
class Provenance:
    """Who settled a job, on which attempt, for which content: stamped on every Result."""

    worker_id: str | None = None
    attempts: int = 1
    job_digest: str | None = None
    model: str | None = None


def build_result(
    job_id: str,
    out: RequestOutput,
    provenance: Provenance,
    constraint: StructuredOutputs | None = None,
) -> Result:
    """A finished request's Result; a request the engine failed becomes a failed Result.
    `constraint`: the job's (job_constraint); a JSON one that finished `stop` gets `parsed`."""
    if out.finish_reason in (ErrorCode.INTERNAL, ErrorCode.INVALID):
        message = getattr(out, "error", None) or "the engine failed this request"
        return failed_result(job_id, str(out.finish_reason), str(message), provenance)
    aborted = out.finish_reason == "abort"
    logprobs = None
    if out.logprobs is not None:
        logprobs = [
            TokenLogprob(token_id=t.token_id, logprob=t.logprob or 0.0, top=t.top_logprobs or {})
            for t in out.logprobs
        ]
    return Result(
        id=job_id,
        status=JobStatus.CANCELLED if aborted else JobStatus.COMPLETED,
        text=out.text,
        token_ids=out.output_token_ids,
        finish_reason=out.finish_reason,
        parsed=parsed_output(constraint, out.text, out.finish_reason),
        usage=Usage(
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=len(out.output_token_ids),
            cached_prompt_tokens=out.num_cached_tokens,
        ),
        timings=_timings(out),
        logprobs=logprobs,
        error=ErrorInfo(code=ErrorCode.CANCELLED, message="aborted") if aborted else None,
        attempts=provenance.attempts,
        worker_id=provenance.worker_id,
        model=provenance.model,
        job_digest=provenance.job_digest,
    )


def failed_result(
    job_id: str, code: str, message: str, provenance: Provenance,
    status: JobStatus = JobStatus.FAILED,
) -> Result:
    return Result(
        id=job_id,
        status=status,
        error=ErrorInfo(code=code, message=message),
        attempts=provenance.attempts,
        worker_id=provenance.worker_id,
        job_digest=provenance.job_digest,
    )
