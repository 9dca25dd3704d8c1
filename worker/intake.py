"""Turning a broker delivery into a Job, or into the reason it cannot be one.

Whatever the bytes, `parse_delivery` returns: it never raises. Only JSON parsing and pydantic
validation touch a payload (nothing is unpickled or evaluated), and the checks run cheapest
first: size, encoding, nesting depth, then the parser, then the schema.
"""

import json
import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from llm_worker.queues.protocol import Delivery
from llm_worker.schemas import ErrorCode, Job
from llm_worker.schemas.digest import job_digest, payload_digest

log = logging.getLogger(__name__)

_JOB_ID: TypeAdapter[str] = TypeAdapter(Annotated[str, *Job.model_fields["id"].metadata])
_MAX_MESSAGE_CHARS = 1000  # a reason stays readable, and a hostile payload is not echoed whole
_BYTE_ORDER_MARKS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "UTF-32 LE"), (b"\x00\x00\xfe\xff", "UTF-32 BE"),
    (b"\xef\xbb\xbf", "UTF-8"), (b"\xff\xfe", "UTF-16 LE"), (b"\xfe\xff", "UTF-16 BE"),
)
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


@dataclass(frozen=True)
class IntakeLimits:
    max_job_bytes: int
    max_json_depth: int


@dataclass(frozen=True)
class Parsed:
    """A delivery that is a valid Job, with the digest that binds its id to its content."""

    job: Job
    digest: str


@dataclass(frozen=True)
class Refusal:
    """Why a delivery will not run. With a job id it becomes a failed result under that id;
    without one it can only go to the dead letters. `digest` is of the raw payload, so the
    same bad message arriving again is recognised as the same."""

    job_id: str | None
    code: str
    message: str
    digest: str

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}"


class _Unusable(Exception):
    """`anonymous`: publish under no id at all, not even the broker key's."""

    def __init__(self, code: str, message: str, anonymous: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.anonymous = anonymous


class _Invalid(Exception):
    def __init__(self, job_id: str | None, summary: str) -> None:
        super().__init__(summary)
        self.job_id = job_id
        self.summary = summary


def usable_job_id(value: object) -> str | None:
    try:
        return _JOB_ID.validate_python(value)
    except ValidationError:
        return None


def printable(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters, with anything UTF-8 cannot carry escaped: a reason
    may quote a hostile key, and the result that carries it must still encode."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def parse_delivery(delivery: Delivery, limits: IntakeLimits) -> Parsed | Refusal:
    key_id = usable_job_id(delivery.key)
    digest = payload_digest(delivery.payload)
    try:
        job = _job(delivery, limits, key_id)
    except _Unusable as exc:
        job_id = None if exc.anonymous else key_id
        return Refusal(job_id, exc.code, printable(exc.message), digest)
    except _Invalid as exc:
        return Refusal(exc.job_id, ErrorCode.INVALID, exc.summary, digest)
    except Exception as exc:  # a bug here must fail this one message, never its batch
        log.exception("intake failed on %s", delivery.position)
        return Refusal(key_id, ErrorCode.INTERNAL, printable(f"intake failed: {exc!r}"), digest)
    return Parsed(job, job_digest(job))


def _job(delivery: Delivery, limits: IntakeLimits, key_id: str | None) -> Job:
    if delivery.error is not None:
        raise _Unusable(ErrorCode.MALFORMED, delivery.error)
    size = len(delivery.payload)
    if size > limits.max_job_bytes:
        raise _Unusable(ErrorCode.TOO_LARGE,
                        f"message is {size} bytes, over max_job_bytes {limits.max_job_bytes}")
    data = parse_json_object(delivery.payload, limits.max_json_depth)
    payload_id = usable_job_id(data.get("id"))
    if delivery.key is not None and payload_id is not None and delivery.key != payload_id:
        # Which of the two ids the producer meant is unknowable: publish under neither.
        raise _Unusable(ErrorCode.INVALID, f"the message key {delivery.key[:80]!r} is not the "
                                           f"job's id {payload_id!r}", anonymous=True)
    try:
        return Job.model_validate(data)
    except ValidationError as exc:
        raise _Invalid(payload_id or key_id, _validation_summary(exc)) from None


def parse_json_object(payload: bytes, max_depth: int) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes; raises _Unusable (malformed) for anything else,
    including a byte-order mark, NaN or Infinity, a repeated key and deep nesting."""
    for mark, name in _BYTE_ORDER_MARKS:
        if payload.startswith(mark):
            raise _Unusable(ErrorCode.MALFORMED, f"starts with a {name} byte-order mark; "
                                                 "jobs are UTF-8 JSON without one")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unusable(ErrorCode.MALFORMED, f"not UTF-8: byte {payload[exc.start]:#04x} at "
                                             f"offset {exc.start}") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise _Unusable(ErrorCode.MALFORMED,
                        f"JSON nested {depth} levels deep, over the limit of {max_depth}")
    try:
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise _Unusable(ErrorCode.MALFORMED, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Unusable(ErrorCode.MALFORMED, f"expected a JSON object, got {type(data).__name__}")
    return data


def nesting_depth(text: str) -> int:
    """How deep JSON text nests arrays and objects, found without parsing it (brackets inside
    strings do not count), so that no parser recurses into a hostile document."""
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    num_opening = brackets.count("[") + brackets.count("{")
    if num_opening <= 1:
        return num_opening
    depth = deepest = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"key {printable(key, 80)!r} appears twice")
            seen.add(key)
    return data


def _validation_summary(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in error['loc']) or 'job'}: "
        f"{error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return printable("; ".join(parts))
