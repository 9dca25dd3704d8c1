"""The pass over a batch file before `run-batch` loads a model: custom_ids must be unique.

OpenAI's batch API validates a file before it runs any of it and refuses one whose custom_ids
repeat: results come back in completion order and are matched to requests by custom_id alone.
The check runs before the run, not while the reader streams, so a file it refuses costs no model
load and no inference, and leaves no half-written output. It reads only the custom_ids (a set of
strings, far smaller than the file); lines that are not JSON objects with a string custom_id are
left to the run, which gives each its own error line.
"""

import json
from pathlib import Path


class BatchInputError(ValueError):
    """The batch file cannot be run as given; the message says why, in one line."""


class DuplicateCustomId(BatchInputError):
    """Two lines of one batch file carry the same custom_id."""

    def __init__(self, custom_id: str, first_line_no: int, line_no: int) -> None:
        super().__init__(
            f"custom_id {custom_id!r} is on line {first_line_no} and on line {line_no}; a batch "
            "needs unique custom_ids to match results to requests (--allow-duplicate-ids runs "
            "them anyway)"
        )
        self.custom_id = custom_id
        self.first_line_no = first_line_no
        self.line_no = line_no


def check_batch_input(path: Path, allow_duplicate_ids: bool) -> None:
    """Raise BatchInputError when `path` cannot be run: missing, or (unless duplicates are
    allowed) not a regular file to read twice, or holding a custom_id twice (DuplicateCustomId,
    at the first repeat). OSError when it cannot be read."""
    if not path.exists():
        raise BatchInputError(f"{path}: no such file")
    if allow_duplicate_ids:
        return
    if not path.is_file():
        raise BatchInputError(
            f"{path} is not a regular file: run-batch reads it once to check that custom_ids are "
            "unique before it runs it; pass --allow-duplicate-ids to stream it unchecked"
        )
    first_line_of: dict[str, int] = {}
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            custom_id = _custom_id(raw)
            if custom_id is None:
                continue
            first_line_no = first_line_of.setdefault(custom_id, line_no)
            if first_line_no != line_no:
                raise DuplicateCustomId(custom_id, first_line_no, line_no)


def _custom_id(raw: bytes) -> str | None:
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep: the run says
        return None
    custom_id = data.get("custom_id") if isinstance(data, dict) else None
    return custom_id if isinstance(custom_id, str) else None
