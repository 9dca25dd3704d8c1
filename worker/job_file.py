"""Jobs from a JSONL file for `llm-worker enqueue --file`: Job JSON lines or OpenAI batch lines
(custom_id / method / url / body), mixed as they come. A line that is not a usable job is kept
as a LineFailure with its number, code and reason; every other line still becomes a job, as in
`run-batch`."""

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from llm_worker.client import encode_job
from llm_worker.openai_batch import (
    LineError,
    decode_line,
    describe_validation,
    parse_request,
)
from llm_worker.queues.errors import JobTooLarge
from llm_worker.schemas import ErrorCode, Job


@dataclass(frozen=True)
class LineFailure:
    line_no: int
    code: str  # an ErrorCode
    detail: str

    def describe(self) -> str:
        return f"line {self.line_no}: {self.code}: {self.detail}"


@dataclass
class JobFile:
    jobs: list[Job] = field(default_factory=list)
    failures: list[LineFailure] = field(default_factory=list)


def read_job_file(path: Path, max_job_bytes: int) -> JobFile:
    """Every non-blank line of `path` as a job or a failure. OSError when it cannot be read."""
    read = JobFile()
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                job = _job(raw, line_no)
                encode_job(job, max_job_bytes)
            except LineError as exc:
                read.failures.append(LineFailure(line_no, exc.code, exc.detail))
            except JobTooLarge as exc:
                read.failures.append(LineFailure(line_no, ErrorCode.TOO_LARGE, str(exc)))
            else:
                read.jobs.append(job)
    return read


def _job(raw: bytes, line_no: int) -> Job:
    data = decode_line(raw, line_no)
    if isinstance(data, dict) and "custom_id" in data:
        return parse_request(data, line_no)[1]
    try:
        return Job.model_validate(data)
    except ValidationError as exc:
        raise LineError(None, ErrorCode.INVALID, line_no, describe_validation(exc)) from exc

