"""Turning a broker delivery into a Job, or into the reason it cannot be one.

Only JSON parsing and pydantic validation ever touch a payload: nothing is unpickled or
evaluated, and a payload over max_job_bytes is refused before it is parsed.
"""

import json
from dataclasses import dataclass
from typing import Annotated

from pydantic import TypeAdapter, ValidationError

from llm_worker.queues.protocol import Delivery
from llm_worker.schemas import ErrorCode, Job

_JOB_ID: TypeAdapter[str] = TypeAdapter(Annotated[str, *Job.model_fields["id"].metadata])
_MAX_MESSAGE_CHARS = 1000  # a reason stays readable, and a hostile payload is not echoed whole


@dataclass(frozen=True)
class Refusal:
    """Why a delivery will not run. With a job id it becomes a failed result under that id;
    without one it can only go to the dead letters."""

    job_id: str | None
    code: str
    message: str

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}"


def usable_job_id(value: object) -> str | None:
    try:
        return _JOB_ID.validate_python(value)
    except ValidationError:
        return None


def _validation_summary(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or 'job'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return "; ".join(parts)[:_MAX_MESSAGE_CHARS]


def parse_delivery(delivery: Delivery, max_job_bytes: int) -> Job | Refusal:
    key_id = usable_job_id(delivery.key)
    if delivery.error is not None:
        return Refusal(key_id, ErrorCode.MALFORMED, delivery.error)
    if len(delivery.payload) > max_job_bytes:
        return Refusal(
            key_id, ErrorCode.TOO_LARGE,
            f"message is {len(delivery.payload)} bytes, over max_job_bytes {max_job_bytes}",
        )
    try:
        data = json.loads(delivery.payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Refusal(key_id, ErrorCode.MALFORMED, f"not JSON: {exc}"[:_MAX_MESSAGE_CHARS])
    if not isinstance(data, dict):
        kind = type(data).__name__
        return Refusal(key_id, ErrorCode.MALFORMED, f"expected a JSON object, got {kind}")
    job_id = usable_job_id(data.get("id")) or key_id
    try:
        return Job.model_validate(data)
    except ValidationError as exc:
        return Refusal(job_id, ErrorCode.INVALID, _validation_summary(exc))
