"""Wire types shared by producers, workers and clients. No torch here."""

from llm_worker.schemas.digest import content_job_id, job_digest, payload_digest
from llm_worker.schemas.job import SCHEMA_VERSION, ChatMessage, Job
from llm_worker.schemas.result import ErrorCode, ErrorInfo, Result, Timings, TokenLogprob, Usage
from llm_worker.schemas.sampling import SamplingParams
from llm_worker.schemas.status import JobStatus

__all__ = [
    "SCHEMA_VERSION",
    "ChatMessage",
    "ErrorCode",
    "ErrorInfo",
    "Job",
    "JobStatus",
    "Result",
    "SamplingParams",
    "Timings",
    "TokenLogprob",
    "Usage",
    "content_job_id",
    "job_digest",
    "payload_digest",
]
