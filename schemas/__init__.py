"""Wire types shared by producers, workers and clients. No torch here."""

from schemas.job import SCHEMA_VERSION, ChatMessage, Job
from schemas.result import ErrorCode, ErrorInfo, Result, Timings, TokenLogprob, Usage
from schemas.sampling import SamplingParams
from schemas.status import JobStatus

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
]
