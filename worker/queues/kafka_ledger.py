"""A jobs partition's ledger: what Kafka cannot tell a worker about the messages it consumes.

One compacted topic, `<jobs_topic>.ledger`, with the jobs topic's partition count; ledger
partition p belongs to jobs partition p and is written only by the transactional producer that
owns p, in the same transactions as p's results and offset commits. Records are keyed by the
jobs offset they describe:

- a run record (worker/queues/runs.py), written before the job enters an engine: a worker that
  finds one still `running` knows the last owner died running it (poison quarantine);
- a done record, written with the message's terminal record: its id and content digest (the
  id's binding), and, while the Redis mirror may lack it, the result itself;
- a tombstone once the committed offset is `window` offsets past it.

So the ledger of p holds the records of the uncommitted tail of p plus the last `window` settled
messages: enough to skip messages settled above the commit point, to count deaths, and to keep
each id bound to its content over the window. Loading it is reading one small partition.
A record the loader cannot read is skipped (PartitionLedger.skip): its offset counts as
unrecorded, so its job runs again if uncommitted, rather than being lost or blocking the
partition.
"""

import json
from dataclasses import dataclass, field

from llm_worker.queues.protocol import Attempts
from llm_worker.queues.runs import RunRecord, UnreadableEntry, strictly
from llm_worker.schemas import Result
from llm_worker.schemas.stored_result import read_result

_DONE = "done"


@dataclass(frozen=True)
class DoneRecord:
    job_id: str | None
    digest: str | None
    result: Result | None = None  # kept until the Redis mirror has it

    def to_json(self) -> bytes:
        return json.dumps({
            "state": _DONE, "job_id": self.job_id, "digest": self.digest,
            "result": None if self.result is None else self.result.model_dump(mode="json"),
        }).encode()

    def slim(self) -> "DoneRecord":
        return DoneRecord(self.job_id, self.digest)


LedgerEntry = RunRecord | DoneRecord


def decode_entry(raw: bytes) -> LedgerEntry:
    """A ledger record's value; UnreadableEntry for anything else (a record that is no run or
    done record as this worker writes them)."""
    with strictly():
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("state") != _DONE:
            return RunRecord.from_json(raw)
        job_id, digest, result = data.get("job_id"), data.get("digest"), data.get("result")
        if not all(v is None or isinstance(v, str) for v in (job_id, digest)):
            raise ValueError("job_id and digest are strings or null")
        return DoneRecord(job_id, digest,
                          None if result is None else read_result(result))


@dataclass(frozen=True)
class Binding:
    digest: str
    offset: int  # the latest offset that carried the id
    settled: bool  # a terminal record for this content is committed


@dataclass
class PartitionLedger:
    """The in-memory copy of one ledger partition, and the claims screening made since it was
    loaded. Its owner (the partition's transactional producer) is its only writer."""

    window: int
    entries: dict[int, LedgerEntry] = field(default_factory=dict)
    # job id -> offsets of the entries that carry it; the latest one binds the id
    carriers: dict[str, set[int]] = field(default_factory=dict)
    tentative: dict[str, Binding] = field(default_factory=dict)  # claimed, not yet recorded
    # offsets whose latest record was unreadable on load: tombstoned as settled ones are
    unreadable: set[int] = field(default_factory=set)
    num_skipped: int = 0  # unreadable records met on load

    def apply(self, offset: int, entry: LedgerEntry | None) -> None:
        """A record as committed (or read back on load); None is a tombstone."""
        self.unreadable.discard(offset)
        old = self.entries.pop(offset, None)
        if old is not None and old.job_id is not None:
            offsets = self.carriers.get(old.job_id, set())
            offsets.discard(offset)
            if not offsets:
                self.carriers.pop(old.job_id, None)
        if entry is None:
            return
        self.entries[offset] = entry
        if entry.job_id is not None and entry.digest is not None:
            self.carriers.setdefault(entry.job_id, set()).add(offset)
            self.tentative.pop(entry.job_id, None)

    def skip(self, offset: int | None) -> None:
        """An unreadable record on load, about `offset` (None: its key names none). Whatever
        it said is unknown, so the offset counts as unrecorded: above the commit point its job
        is fetched and run again, at least once rather than lost, which an unknown record may
        not be taken to have settled. Earlier records of the offset are forgotten too, as
        compaction may already have removed them: the latest record of a key decides."""
        self.num_skipped += 1
        if offset is not None:
            self.apply(offset, None)
            self.unreadable.add(offset)

    def binding(self, job_id: str) -> Binding | None:
        offsets = self.carriers.get(job_id)
        if not offsets:
            return self.tentative.get(job_id)
        latest = max(offsets)
        entry = self.entries[latest]
        assert entry.digest is not None
        return Binding(entry.digest, latest, isinstance(entry, DoneRecord))

    def done_offsets(self, from_offset: int) -> set[int]:
        """Offsets at or above `from_offset` that are settled already: never hand them out."""
        entries = self.entries.items()
        return {o for o, e in entries if o >= from_offset and isinstance(e, DoneRecord)}

    def attempts(self, offset: int) -> Attempts:
        entry = self.entries.get(offset)
        return entry.attempts() if isinstance(entry, RunRecord) else Attempts()

    def run(self, offset: int) -> RunRecord | None:
        entry = self.entries.get(offset)
        return entry if isinstance(entry, RunRecord) else None

    def claim(self, job_id: str, digest: str, offset: int) -> Binding | None:
        """Bind the id to `digest` unless it is bound already; returns the earlier binding.
        The claim holds in memory until the delivery's run or done record carries it."""
        bound = self.binding(job_id)
        if bound is None:
            self.tentative[job_id] = Binding(digest, offset, settled=False)
        return bound

    def expired(self, committed: int) -> list[int]:
        """Settled offsets the window has passed: tombstone them in the next transaction."""
        horizon = committed - self.window
        settled = [o for o, e in self.entries.items() if o < horizon and isinstance(e, DoneRecord)]
        return settled + [o for o in self.unreadable if o < horizon]

    def unmirrored(self) -> dict[int, Result]:
        return {o: e.result for o, e in self.entries.items()
                if isinstance(e, DoneRecord) and e.result is not None}


def entry_key(offset: int) -> bytes:
    return str(offset).encode()


def entry_offset(key: bytes | None) -> int:
    """The jobs offset a ledger key names, written as entry_key writes it; UnreadableEntry
    for any other key (a tombstone must hit the same key to replace the record)."""
    if key is None or not key.isdigit() or len(key) > 20 or entry_key(int(key)) != key:
        raise UnreadableEntry(f"key {key[:40] if key else key!r} names no jobs offset")
    return int(key)
