"""One canonical digest of what a job asks for, binding a job id to its content.

Workers refuse a second message that reuses an id for other content, and clients check that a
stored result answers the content they sent. Scheduling and tracing fields are not content: a
producer may resend a job with a new traceparent, priority or deadline and it is the same job.
"""

import hashlib
import json

from llm_worker.schemas.job import Job

_NOT_CONTENT = {"schema_version", "id", "priority", "deadline", "metadata", "created_at"}


def job_digest(job: Job) -> str:
    """sha256 over the job's content as canonical JSON; fields left at their defaults are left
    out, so sending a default explicitly, or a field added later with a default, changes
    nothing."""
    content = job.model_dump(mode="json", exclude=_NOT_CONTENT, exclude_defaults=True)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def payload_digest(payload: bytes) -> str:
    """The digest of a message that never became a Job: its bytes, as received."""
    return "raw-sha256:" + hashlib.sha256(payload).hexdigest()


def content_job_id(stem: str, job: Job) -> str:
    """An id for a job whose id is derived (a file's line, a custom_id): `stem` plus a hash of
    the content, so changed content never reuses the id of the old content's result. `stem`
    must already be a valid id of at most 230 characters."""
    return f"{stem}-{job_digest(job).removeprefix('sha256:')[:16]}"
