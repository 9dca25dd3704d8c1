"""Reading a result back from a broker, where a newer worker may have written it.

A Result is built strictly (an unknown field is a bug of the code that builds it), but one read
back from Redis or the Kafka ledger may come from a later version in a rolling upgrade, with
fields this version does not know. Those are dropped, at any depth, and the result reads as the
terminal result it is: refused, it would make this worker run the job again (the Kafka ledger)
or refuse every batch that carries the job's id (the Redis screening). Anything else that does
not validate is still refused.
"""

import json
from typing import Any

from pydantic import ValidationError

from llm_worker.schemas.result import Result


def read_result(raw: str | bytes | dict[str, Any]) -> Result:
    """A stored result; ValueError (JSON's or pydantic's) for bytes that are not one."""
    data = json.loads(raw) if isinstance(raw, str | bytes) else raw
    try:
        return Result.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = [e["loc"] for e in errors if e["type"] == "extra_forbidden"]
        if not unknown or len(unknown) != len(errors):
            raise
    known = _without(data, unknown)
    return Result.model_validate(known)


def _without(data: Any, paths: list[tuple[int | str, ...]]) -> Any:
    """A copy of the JSON value `data` without the members at `paths`."""
    drop_here = {path[0] for path in paths if len(path) == 1}
    deeper: dict[int | str, list[tuple[int | str, ...]]] = {}
    for path in paths:
        if len(path) > 1:
            deeper.setdefault(path[0], []).append(path[1:])
    if isinstance(data, dict):
        return {k: _without(v, deeper[k]) if k in deeper else v
                for k, v in data.items() if k not in drop_here}  # fmt: skip
    if isinstance(data, list):
        return [_without(v, deeper[i]) if i in deeper else v for i, v in enumerate(data)]
    return data
