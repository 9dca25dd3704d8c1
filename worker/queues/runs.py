"""What a broker keeps of a delivery while a worker runs it, so that a worker's death while
running it is counted against that job (poison quarantine) and not against its batch-mates.

The record is written before the job enters the engine (`running`), rewritten when the run is
handed back on purpose, and deleted with the ack. A record found still `running` by the next
screening means the worker that wrote it died before settling the job; the screening counts
that death and writes the record back counted.

A record is a broker's bytes, so anyone's: readers decode it strictly (decode_run, or under
`strictly()`), and one they cannot read raises UnreadableEntry, which they skip and count as no
record, so its job runs again rather than being lost or blocking the queue.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

from llm_worker.queues.protocol import Attempts, Run

_T = TypeVar("_T")


class UnreadableEntry(ValueError):
    """A broker's record that is none as this worker writes them (a buggy or foreign writer's
    bytes, a truncated value), or whose key names nothing this worker writes: a Kafka ledger
    record, a Redis run record."""


@contextmanager
def strictly() -> Iterator[None]:
    """What a decoder in the block raises for bad bytes (JSONDecodeError, UnicodeDecodeError,
    pydantic's ValidationError: all ValueError) as one UnreadableEntry, so that a reader can tell
    a record nobody can read from a broker failure."""
    try:
        yield
    except UnreadableEntry:
        raise
    except ValueError as exc:
        raise UnreadableEntry(f"{type(exc).__name__}: {str(exc)[:200]}") from exc


@dataclass(frozen=True)
class RunRecord:
    job_id: str
    digest: str
    deaths: int  # before the run this record describes
    solo_deaths: int
    running: bool  # True: the run is under way, or its worker died during it
    solo: bool
    last_error: str | None = None

    @classmethod
    def of(cls, run: Run) -> "RunRecord":
        a = run.attempts
        return cls(run.job_id, run.digest, a.deaths, a.solo_deaths, True, run.solo, a.last_error)

    def attempts(self) -> Attempts:
        """The attempts as the next screening sees them: a run still marked running died."""
        if not self.running:
            return Attempts(self.deaths, self.solo_deaths, self.last_error)
        return Attempts(self.deaths + 1, self.solo_deaths + int(self.solo), self.last_error)

    def counted(self) -> "RunRecord":
        """The record once a screening has counted its death: written back at once, so the
        death counts once whoever screens the delivery next."""
        if not self.running:
            return self
        a = self.attempts()
        return replace(self, deaths=a.deaths, solo_deaths=a.solo_deaths, running=False)

    def handed_back(self) -> "RunRecord":
        return replace(self, running=False)

    def crashed(self, error: str) -> "RunRecord":
        return replace(self, last_error=error[:500])

    def to_json(self) -> bytes:
        return json.dumps({
            "job_id": self.job_id, "digest": self.digest, "deaths": self.deaths,
            "solo_deaths": self.solo_deaths, "running": self.running, "solo": self.solo,
            "last_error": self.last_error,
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> "RunRecord":
        """ValueError for anything but a record as to_json writes it (a broker's bytes may be
        anyone's)."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a run record is a JSON object")
        last_error = data.get("last_error")
        if last_error is not None and not isinstance(last_error, str):
            raise ValueError("run record field 'last_error' is not a string")
        return cls(_typed(data, "job_id", str), _typed(data, "digest", str),
                   _typed(data, "deaths", int), _typed(data, "solo_deaths", int),
                   _typed(data, "running", bool), _typed(data, "solo", bool), last_error)


def _typed(data: dict, name: str, kind: type[_T]) -> _T:
    value = data.get(name)
    # bool is an int to isinstance, and a count must not be one
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"run record field {name!r}: {type(value).__name__}, not {kind.__name__}")
    return value


def decode_run(raw: bytes) -> RunRecord:
    """A run record's value; UnreadableEntry for anything else."""
    with strictly():
        return RunRecord.from_json(raw)
