"""Consumer lag as each source reports it, against the real brokers."""

import pytest

from llm_worker.queues.kafka import KafkaJobSource
from llm_worker.queues.memory import MemoryBroker
from llm_worker.schemas import Job
from tests.queues.test_kafka import _enqueue as kafka_enqueue
from tests.queues.test_kafka import _receive_at_least
from tests.queues.test_kafka import settings as kafka_settings
from tests.queues.test_redis_streams import _enqueue as redis_enqueue
from tests.queues.test_redis_streams import _source as redis_source
from tests.queues.test_redis_streams import settings as redis_settings

__all__ = ["kafka_settings", "redis_settings"]

pytestmark = [pytest.mark.anyio]


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_redis_lag_counts_entries_not_yet_read_by_the_group(redis_settings) -> None:
    await redis_enqueue(redis_settings, [Job(id=f"lag-{i}", prompt="p") for i in range(7)])
    source = redis_source(redis_settings, "w1")
    await source.start()
    assert await source.lag() == 7
    got = await source.receive(3, 0.1)
    assert len(got) == 3 and await source.lag() == 4
    await source.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_kafka_lag_counts_records_past_the_fetch_position(kafka_settings) -> None:
    await kafka_enqueue(kafka_settings, 12)
    source = KafkaJobSource(kafka_settings, "w1")
    await source.start()
    first = await _receive_at_least(source, 4, 4)
    assert len(first) == 4
    assert await source.lag() == 12 - 4  # fetched ahead internally, but not handed out
    rest = await _receive_at_least(source, 8, 8)
    assert len(rest) == 8 and await source.lag() == 0
    await source.close()


async def test_memory_lag_is_what_is_queued() -> None:
    broker = MemoryBroker()
    for i in range(4):
        broker.put(b"{}", key=str(i))
    source = broker.source()
    assert await source.lag() == 4
    await source.receive(1, 0.0)
    assert await source.lag() == 3
