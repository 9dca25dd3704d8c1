"""KafkaJobSource and KafkaResultSink against a real single-node KRaft broker."""

import pytest

from llm_worker.client import KafkaProducer
from llm_worker.queues.kafka import KafkaJobSource, OffsetTracker
from llm_worker.schemas import Job
from llm_worker.service_settings import KafkaSettings
from tests.brokers import topic_settings
from tests.kafka_read import committed_offsets, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str) -> KafkaSettings:
    return topic_settings(kafka_bootstrap, unique_name, num_partitions=2)


async def _enqueue(settings: KafkaSettings, n: int) -> None:
    async with KafkaProducer(settings) as producer:
        await producer.enqueue_many(Job(id=f"job-{i}", prompt="p") for i in range(n))


async def _receive_at_least(source: KafkaJobSource, n: int, max_jobs: int) -> list:
    got: list = []
    for _ in range(100):
        got += await source.receive(max_jobs - len(got), 0.2)
        if len(got) >= n:
            break
    return got


def test_tracker_commits_only_below_the_oldest_in_flight() -> None:
    tracker = OffsetTracker(generation=1)
    for offset in (10, 11, 12, 14):  # 13 is a gap (e.g. a compacted record)
        tracker.fetched(offset)
    tracker.in_flight -= {10, 12}
    assert tracker.committable() == 11
    tracker.in_flight -= {11, 14}
    assert tracker.committable() == 15
    tracker.committed = 15
    assert tracker.committable() is None


async def test_commit_is_contiguous_and_unfinished_are_redelivered(settings: KafkaSettings) -> None:
    await _enqueue(settings, 20)
    source = KafkaJobSource(settings, "w1")
    await source.start()
    got = await _receive_at_least(source, 20, 20)
    assert len(got) == 20
    unfinished = {d.key for d in got if d.key in ("job-3", "job-11")}
    for delivery in got:
        if delivery.key not in unfinished:
            await source.ack(delivery)
    await source.close()
    committed = await committed_offsets(settings.bootstrap_servers, settings.group_id)
    assert sum(committed.values()) < 20  # the unfinished ones hold their partitions back

    again = KafkaJobSource(settings, "w2")
    await again.start()
    redelivered = await _receive_at_least(again, 2, 20)
    assert unfinished <= {d.key for d in redelivered}
    assert len(redelivered) < 20
    await again.close()


async def test_paused_source_hands_out_nothing_then_resumes(settings: KafkaSettings) -> None:
    await _enqueue(settings, 5)
    source = KafkaJobSource(settings, "w1")
    await source.start()
    for _ in range(10):  # join the group and fetch while paused: nothing comes out
        assert await source.receive(0, 0.2) == []
    got = await _receive_at_least(source, 5, 3)
    assert len(got) == 3  # never more than the free slots asked for
    await source.close()


async def test_dead_letter_is_committed_once_with_its_offset(settings: KafkaSettings) -> None:
    await _enqueue(settings, 1)
    source = KafkaJobSource(settings, "w1")
    await source.start()
    [delivery] = await _receive_at_least(source, 1, 1)
    await source.dead_letter(delivery, "schema violation: test")
    await source.close()
    [dead] = await read_topic(settings.bootstrap_servers, settings.dead_letter_topic, 1)
    assert dict(dead.headers)["reason"] == b"schema violation: test"
    assert dict(dead.headers)["truncated"] == b"false"
    assert dead.key == b"job-0"
    committed = await committed_offsets(settings.bootstrap_servers, settings.group_id)
    assert sum(committed.values()) == 1


async def test_a_source_takes_nothing_back_while_its_group_rebalances(
        settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between a revocation and the next assignment the consumer still reports the old one: a
    # heal in that window took the revoked partitions back, fenced the worker given them, and
    # left this one holding a partition it was not assigned (resume failed on every poll).
    await _enqueue(settings, 10)
    first = KafkaJobSource(settings, "first")
    await first.start()
    assert len(await _receive_at_least(first, 10, 10)) == 10
    taken_back = []
    let_go = first.partitions.let_go

    async def let_go_then_heal(revoked: list) -> None:
        await let_go(revoked)
        taken_back.extend(p.tp for p in await first.partitions.heal())

    monkeypatch.setattr(first.partitions, "let_go", let_go_then_heal)
    second = KafkaJobSource(settings, "second")
    await second.start()
    for _ in range(150):  # both poll until the group has settled on one partition each
        await first.receive(0, 0.1)
        await second.receive(0, 0.1)
        if len(first.owned) == len(second.owned) == 1:
            break
    assert taken_back == []
    assert set(first.owned) == first._consumer.assignment()  # type: ignore[union-attr]
    assert set(second.owned) == second._consumer.assignment()  # type: ignore[union-attr]
    assert not set(first.owned) & set(second.owned)
    monkeypatch.undo()
    await second.close()
    await first.close()
