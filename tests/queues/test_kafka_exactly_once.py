"""Kafka's transactional settlement against a real broker: a fenced (zombie) worker commits
nothing and gives the partition up, a take-over that fails half way leaves nothing open, a
worker taking a partition over skips what was settled above the commit point, counts the death
of a run left running, runs again a job whose ledger record it cannot read, keeps ids bound
to their content through the ledger, and stays in the group through a take-over longer than
the session timeout."""

import asyncio
import gc
import logging
import time
import warnings
from typing import NoReturn

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from llm_worker.client import KafkaProducer
from llm_worker.queues import kafka_ownership
from llm_worker.queues.kafka import KafkaJobSource
from llm_worker.queues.kafka_conn import client_kwargs, ensure_ledger_topic, ensure_topics
from llm_worker.queues.kafka_ownership import Ownership
from llm_worker.queues.kafka_partition import ledger_topic
from llm_worker.queues.kafka_producer import transactional_id
from llm_worker.queues.kafka_results import KafkaResultSink
from llm_worker.queues.protocol import Attempts, Claim, Delivery, Outcome, Run
from llm_worker.schemas import Job, JobStatus, Result, job_digest
from llm_worker.service_settings import KafkaSettings
from tests.brokers import topic_settings
from tests.kafka_read import committed_offsets, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str) -> KafkaSettings:
    return topic_settings(kafka_bootstrap, unique_name, num_partitions=1)


JOBS = [Job(id=f"job-{i}", prompt_token_ids=[5, 6, i + 7]) for i in range(3)]


async def _enqueue(settings: KafkaSettings, jobs: list[Job]) -> None:
    async with KafkaProducer(settings) as producer:
        await producer.enqueue_many(jobs)


async def _started(settings: KafkaSettings, worker_id: str, n: int) -> tuple[KafkaJobSource,
                                                                              list[Delivery]]:
    source = KafkaJobSource(settings, worker_id)
    await source.start()
    got: list[Delivery] = []
    for _ in range(100):
        got += await source.receive(n - len(got), 0.2)
        if len(got) >= n:
            break
    assert len(got) == n
    return source, got


def _result(delivery: Delivery) -> Outcome:
    job = Job.model_validate_json(delivery.payload)
    return Outcome([delivery], Result(id=job.id, status=JobStatus.COMPLETED,
                                      job_digest=job_digest(job)))


def _claims(deliveries: list[Delivery]) -> list[Claim]:
    jobs = [Job.model_validate_json(d.payload) for d in deliveries]
    return [Claim(d, job.id, job_digest(job)) for d, job in zip(deliveries, jobs, strict=True)]


@pytest.mark.parametrize("write", ["settle", "ack", "run record"])
async def test_a_fenced_worker_commits_nothing(settings: KafkaSettings, write: str) -> None:
    await _enqueue(settings, JOBS[:1])
    zombie, [delivery] = await _started(settings, "zombie", 1)
    # The partition's next owner registers its transactional id: this fences the zombie.
    successor = AIOKafkaProducer(**client_kwargs(settings),
                                 transactional_id=transactional_id(settings, 0))
    await successor.start()
    await successor.begin_transaction()
    await successor.commit_transaction()
    if write == "settle":  # records, then the offset (the fence may surface at either)
        await zombie.settlement(_sink(settings)).commit([_result(delivery)])
    elif write == "ack":
        await zombie.ack(delivery)
    else:  # a ledger record alone, no offset
        [claim] = _claims([delivery])
        await zombie.started([Run(delivery, claim.job_id, claim.digest, Attempts(), False)])
    assert not zombie.owns(delivery)
    assert zombie.partitions.serving() == []
    assert await zombie.receive(1, 0.2) == []  # nor taken back at once: that would fence the next
    await zombie.close()
    await successor.stop()
    for topic in (settings.results_topic, ledger_topic(settings)):
        assert await read_topic(settings.bootstrap_servers, topic, 0, timeout_s=3) == []
    assert await committed_offsets(settings.bootstrap_servers, settings.group_id) == {}
    # The dead producer's futures are collected now, under this test: none may hold an error
    # nobody retrieved (the loop's exception handler would get it, and this test fail).
    gc.collect()


async def test_a_take_over_that_fails_half_way_leaves_no_producer_open(
        kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = topic_settings(kafka_bootstrap, unique_name, num_partitions=2)
    await ensure_topics(settings)
    await ensure_ledger_topic(settings)

    async def unreachable(*args: object) -> NoReturn:  # called after fencing both partitions
        raise KafkaConnectionError("the ledger is out of reach")

    monkeypatch.setattr(kafka_ownership, "read_ledgers", unreachable)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=settings.group_id,
                                enable_auto_commit=False)
    reader = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False,
                              isolation_level="read_committed")
    await consumer.start()
    await reader.start()
    partitions = [TopicPartition(settings.jobs_topic, p) for p in (0, 1)]
    consumer.assign(partitions)
    ownership = Ownership(settings)
    ownership.attach(consumer, reader)
    gc.collect()  # earlier tests' garbage is not this test's
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(KafkaConnectionError):
                await ownership.adopt(partitions)
            gc.collect()
        assert [str(w.message) for w in caught if "AIOKafkaProducer" in str(w.message)] == []
        assert ownership.owned == {}
    finally:
        await consumer.stop()
        await reader.stop()


async def test_a_new_owner_skips_what_was_settled_and_counts_a_death(
        settings: KafkaSettings) -> None:
    await _enqueue(settings, JOBS)
    first, deliveries = await _started(settings, "first", 3)
    await first.screen(_claims(deliveries))
    await first.started([Run(deliveries[0], "job-0", job_digest(JOBS[0]), Attempts(), False)])
    await first.settlement(_sink(settings)).commit([_result(d) for d in deliveries[1:]])
    assert first.trackers[deliveries[0].handle.partition].committed == 0  # type: ignore[attr-defined]
    await first._consumer.stop()  # dies holding job-0: no hand-back, no final commit

    second, [again] = await _started(settings, "second", 1)  # job-1 and job-2 are settled
    assert Job.model_validate_json(again.payload).id == "job-0"
    [screened] = await second.screen(_claims([again]))
    assert screened.attempts == Attempts(deaths=1, solo_deaths=0)
    await second.close()
    await first.close()  # the dead worker's producers, fenced: they write nothing


async def test_an_unreadable_ledger_record_is_skipped_and_its_job_runs_again(
        settings: KafkaSettings, caplog: pytest.LogCaptureFixture) -> None:
    await _enqueue(settings, JOBS)
    first, deliveries = await _started(settings, "first", 3)
    await first.screen(_claims(deliveries))
    await first.settlement(_sink(settings)).commit([_result(d) for d in deliveries[1:]])
    await first._consumer.stop()  # dies holding job-0: the commit point stays at 0
    # A buggy producer overwrites job-2's done record and adds a record keyed by no offset.
    async with AIOKafkaProducer(**client_kwargs(settings)) as producer:
        for key, value in ((b"2", b"{not json"), (b"job-1", b'{"state": "done"}')):
            await producer.send_and_wait(ledger_topic(settings), value, key=key, partition=0)

    with caplog.at_level(logging.WARNING):
        second, again = await _started(settings, "second", 2)  # job-1 alone is known settled
    assert sorted(Job.model_validate_json(d.payload).id for d in again) == ["job-0", "job-2"]
    skipped = [m for r in caplog.records if "unreadable ledger record" in (m := r.getMessage())]
    assert len(skipped) == 2, skipped
    assert all(f"{ledger_topic(settings)}/0@" in message for message in skipped)
    assert second.partitions.num_unreadable_ledger_records == 2
    await second.screen(_claims(again))
    await second.settlement(_sink(settings)).commit([_result(d) for d in again])
    assert await second.receive(1, 0.2) == []  # still serving, nothing raised
    assert second.partitions.serving() == [TopicPartition(settings.jobs_topic, 0)]
    await second.close()
    await first.close()
    assert await committed_offsets(settings.bootstrap_servers, settings.group_id) == {0: 3}
    records = await read_topic(settings.bootstrap_servers, settings.results_topic, 4)
    # job-2 twice: at least once for the job whose record was lost, never not at all
    assert sorted(r.key.decode() for r in records) == ["job-0", "job-1", "job-2", "job-2"]


async def test_ids_stay_bound_to_their_content_across_owners(settings: KafkaSettings) -> None:
    await _enqueue(settings, JOBS[:1])
    first, [delivery] = await _started(settings, "first", 1)
    await first.screen(_claims([delivery]))
    await first.settlement(_sink(settings)).commit([_result(delivery)])
    await first.close()

    other = JOBS[0].model_copy(update={"prompt_token_ids": [9, 9, 9]})
    await _enqueue(settings, [JOBS[0], other])
    second, copies = await _started(settings, "second", 2)
    same, changed = await second.screen(_claims(copies))
    assert same.bound_digest is None and same.settled
    assert changed.bound_digest == job_digest(JOBS[0])
    await second.close()


def _sink(settings: KafkaSettings) -> KafkaResultSink:
    return KafkaResultSink(settings, mirror=None)


async def test_a_take_over_longer_than_the_session_timeout_keeps_the_worker_in_the_group(
        settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka sends no heartbeat while the rebalance listener runs. A take-over that outlasted
    the session timeout inside it got the worker evicted, and its rejoining took over again."""
    # the test broker's shortest session (group.min.session.timeout.ms), to keep the test short
    settings = settings.model_copy(update={"session_timeout_ms": 2000,
                                           "heartbeat_interval_ms": 500})  # fmt: skip
    await _enqueue(settings, JOBS)
    session_s = settings.session_timeout_ms / 1000
    read_ledgers, starts = kafka_ownership.read_ledgers, []

    async def slow_read_ledgers(*args: object, **kwargs: object) -> object:
        starts.append(time.monotonic())
        await asyncio.sleep(1.5 * session_s)
        return await read_ledgers(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kafka_ownership, "read_ledgers", slow_read_ledgers)
    with caplog.at_level(logging.WARNING, logger="llm_worker.queues.kafka"):
        source, deliveries = await _started(settings, "slow", len(JOBS))
    assert sorted(d.key or "" for d in deliveries) == [job.id for job in JOBS]
    serving_until = time.monotonic() + 1.5 * session_s  # an eviction would show by then
    while time.monotonic() < serving_until:
        assert await source.receive(len(JOBS), 0.2) == []
    assert len(starts) == 1, "taken over again: the group evicted the worker"
    assert "goes on in the background" in caplog.text
    await source.close()
