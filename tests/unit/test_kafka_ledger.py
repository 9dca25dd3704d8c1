"""The Kafka partition ledger's bookkeeping against a model: an id is bound by the latest live
record that carries it, and a worker that loads the ledger's committed records knows exactly
what the worker that wrote them knew (bindings, settled offsets, deaths)."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_worker.queues.kafka_ledger import (
    DoneRecord,
    LedgerEntry,
    PartitionLedger,
    UnreadableEntry,
    decode_entry,
    entry_key,
    entry_offset,
)
from llm_worker.queues.runs import RunRecord

_IDS = st.sampled_from(["a", "b", "c"])
_DIGESTS = st.sampled_from(["sha256:1", "sha256:2"])
_RUN = st.builds(RunRecord, _IDS, _DIGESTS, st.integers(0, 3), st.integers(0, 3), st.booleans(),
                 st.booleans(), st.none() | st.just("engine crashed"))
_DONE = st.builds(DoneRecord, st.none() | _IDS, st.none() | _DIGESTS)
_RECORDS = st.lists(st.tuples(st.integers(0, 12), st.none() | _RUN | _DONE), max_size=40)


def _model_binding(entries: dict[int, LedgerEntry], job_id: str) -> tuple[str, int, bool] | None:
    carrying = [o for o, e in entries.items() if e.job_id == job_id and e.digest is not None]
    if not carrying:
        return None
    latest = max(carrying)
    entry = entries[latest]
    return entry.digest, latest, isinstance(entry, DoneRecord)  # type: ignore[return-value]


@given(_RECORDS)
def test_bindings_follow_the_latest_live_record(records: list) -> None:
    ledger = PartitionLedger(window=5)
    model: dict[int, LedgerEntry] = {}
    for offset, entry in records:
        ledger.apply(offset, entry)
        if entry is None:
            model.pop(offset, None)
        else:
            model[offset] = entry
    assert ledger.entries == model
    for job_id in ("a", "b", "c"):
        bound = ledger.binding(job_id)
        got = None if bound is None else (bound.digest, bound.offset, bound.settled)
        assert got == _model_binding(model, job_id)


@given(_RECORDS, st.lists(st.tuples(_IDS, _DIGESTS, st.integers(13, 20)), max_size=5))
def test_a_loaded_ledger_knows_what_its_writer_committed(records: list, claims: list) -> None:
    live = PartitionLedger(window=5)
    for offset, entry in records:
        live.apply(offset, entry)
    for job_id, digest, offset in claims:  # screening's claims: in memory only, never loaded
        live.claim(job_id, digest, offset)
    loaded = PartitionLedger(window=5)
    for offset, entry in records:  # as read back: the bytes that were committed
        loaded.apply(offset, None if entry is None else decode_entry(entry.to_json()))
    assert loaded.entries == live.entries
    assert loaded.done_offsets(0) == live.done_offsets(0)
    for offset in range(13):
        assert loaded.attempts(offset) == live.attempts(offset)
    for job_id in ("a", "b", "c"):
        if job_id not in live.tentative:
            assert loaded.binding(job_id) == live.binding(job_id)


@given(_RECORDS, st.integers(0, 15))
def test_expiry_only_takes_settled_records_the_window_has_passed(records: list,
                                                                 committed: int) -> None:
    ledger = PartitionLedger(window=5)
    for offset, entry in records:
        ledger.apply(offset, entry)
    for offset in ledger.expired(committed):
        assert offset < committed - 5 and isinstance(ledger.entries[offset], DoneRecord)
    kept = set(ledger.entries) - set(ledger.expired(committed))
    assert all(o >= committed - 5 or isinstance(ledger.entries[o], RunRecord) for o in kept)


def test_a_run_left_running_counts_a_death_and_a_solo_one_when_it_ran_alone() -> None:
    ledger = PartitionLedger(window=5)
    ledger.apply(3, RunRecord("a", "sha256:1", 1, 0, running=True, solo=True))
    ledger.apply(4, RunRecord("b", "sha256:1", 1, 0, running=False, solo=True))
    assert (ledger.attempts(3).deaths, ledger.attempts(3).solo_deaths) == (2, 1)
    assert (ledger.attempts(4).deaths, ledger.attempts(4).solo_deaths) == (1, 0)


_JSON_VALUES = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.lists(
    st.integers(), max_size=2)
_FIELDS = st.sampled_from(["state", "job_id", "digest", "result", "deaths", "solo_deaths",
                           "running", "solo", "last_error"])


@given(st.binary(max_size=60) | st.dictionaries(_FIELDS, _JSON_VALUES | st.just("done")).map(
    lambda d: json.dumps(d).encode()))
def test_a_ledger_value_decodes_to_an_entry_or_is_unreadable(raw: bytes) -> None:
    try:
        entry = decode_entry(raw)
    except UnreadableEntry:
        return
    assert isinstance(entry.job_id, str | None) and isinstance(entry.digest, str | None)
    if isinstance(entry, RunRecord):
        assert all(type(n) is int for n in (entry.deaths, entry.solo_deaths))


@pytest.mark.parametrize("raw", [
    b"{not json", b"\xff\xfe", b"[1]", b'"done"', b"{}",
    RunRecord("a", "sha256:1", 0, 0, True, False).to_json()[:-1],  # truncated
    b'{"job_id": "a", "digest": "d", "deaths": "1", "solo_deaths": 0, "running": true, '
    b'"solo": false}',
    b'{"job_id": "a", "digest": "d", "deaths": true, "solo_deaths": 0, "running": true, '
    b'"solo": false}',
    b'{"state": "done", "job_id": 5, "digest": null}',
    b'{"state": "done", "job_id": "a", "digest": "d", "result": {"id": 3}}',
])
def test_what_to_json_never_writes_is_unreadable(raw: bytes) -> None:
    with pytest.raises(UnreadableEntry):
        decode_entry(raw)


def test_a_done_record_from_a_newer_version_reads_as_done() -> None:
    """Its result's fields this version does not know are dropped: the record still settles
    its offset and binds its id, where refused it would make this worker run the job again."""
    result = {"id": "a", "status": "completed", "text": "hi", "usage": {"prompt_tokens": 2,
              "reasoning_tokens": 1}, "reasoning": "added later"}  # fmt: skip
    raw = json.dumps({"state": "done", "job_id": "a", "digest": "sha256:1", "result": result})
    entry = decode_entry(raw.encode())
    assert isinstance(entry, DoneRecord) and (entry.job_id, entry.digest) == ("a", "sha256:1")
    assert entry.result is not None and entry.result.text == "hi"
    assert entry.result.usage.prompt_tokens == 2


@pytest.mark.parametrize("key", [None, b"", b"x", b"-1", b"01", b" 1", b"1_0", b"9" * 30])
def test_a_key_that_entry_key_never_writes_names_no_offset(key: bytes | None) -> None:
    with pytest.raises(UnreadableEntry):
        entry_offset(key)
    assert entry_offset(entry_key(1234)) == 1234


def test_an_unreadable_record_leaves_its_offset_unsettled_until_the_window_passes() -> None:
    ledger = PartitionLedger(window=5)
    ledger.apply(3, DoneRecord("a", "sha256:1"))
    ledger.skip(3)  # the latest record of offset 3 decides, and it says nothing readable
    ledger.skip(None)
    assert ledger.num_skipped == 2
    assert ledger.done_offsets(0) == set() and ledger.binding("a") is None
    assert ledger.expired(8) == [] and ledger.expired(9) == [3]
    ledger.apply(3, None)  # the tombstone expiry writes
    assert ledger.unreadable == set()
