"""Between the wire and the engine: a Job becomes token ids + params; an output becomes a Result.

Shared by every intake path (run-batch, Redis, Kafka) so they fail and succeed identically.
"""

import time
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


class JobError(Exception):
    """A job that cannot run; becomes a `failed` Result with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Render the model's chat template, then tokenize the text (the template adds any BOS)."""
    if tokenizer.chat_template is None:
        raise JobError(ErrorCode.INVALID, "this model has no chat template; send prompt instead")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def prepare_job(job: Job, tokenizer: Any, served_model: str) -> tuple[list[int], SamplingParams]:
    if job.model is not None and job.model != served_model:
        raise JobError(
            ErrorCode.UNKNOWN_MODEL,
            f"model {job.model!r} is not served here; this worker serves {served_model!r}",
        )
    if job.prompt_token_ids is not None:
        return list(job.prompt_token_ids), job.sampling
    if tokenizer is None:
        raise JobError(ErrorCode.INVALID, "this model has no tokenizer; send prompt_token_ids")
    if job.messages is not None:
        ids = chat_prompt_ids(tokenizer, [m.model_dump() for m in job.messages])
    else:
        ids = list(tokenizer.encode(job.prompt))
    if not ids:
        raise JobError(ErrorCode.INVALID, "the prompt encodes to no tokens")
    return ids, job.sampling


def _timings(out: RequestOutput) -> Timings:
    m = out.metrics
    end = m.finished_time or time.monotonic()
    ttft = (m.first_token_time - m.arrival_time) if m.first_token_time else None
    n = len(out.output_token_ids)
    tpot = (end - m.first_token_time) / (n - 1) if m.first_token_time and n > 1 else None
    queue = (m.first_scheduled_time - m.arrival_time) if m.first_scheduled_time else None
    return Timings(queue_s=queue, ttft_s=ttft, tpot_s=tpot, e2e_s=end - m.arrival_time)


def build_result(
    job_id: str,
    out: RequestOutput,
    *,
    worker_id: str | None = None,
    attempts: int = 1,
    model: str | None = None,
) -> Result:
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
        usage=Usage(
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=len(out.output_token_ids),
            cached_prompt_tokens=out.num_cached_tokens,
        ),
        timings=_timings(out),
        logprobs=logprobs,
        error=ErrorInfo(code=ErrorCode.CANCELLED, message="aborted") if aborted else None,
        attempts=attempts,
        worker_id=worker_id,
        model=model,
    )


def failed_result(
    job_id: str,
    code: str,
    message: str,
    *,
    status: JobStatus = JobStatus.FAILED,
    worker_id: str | None = None,
    attempts: int = 1,
) -> Result:
    return Result(
        id=job_id,
        status=status,
        error=ErrorInfo(code=code, message=message),
        attempts=attempts,
        worker_id=worker_id,
    )
