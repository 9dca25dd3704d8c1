"""RedisStreamSource and RedisResultStore against a real redis-server."""

import asyncio

import pytest
import redis.asyncio as aioredis

from llm_worker.client import RedisProducer
from llm_worker.queues.errors import BrokerAuthError
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.redis_results import RedisResultStore
from llm_worker.queues.redis_streams import RedisSourceConfig, RedisStreamSource
from llm_worker.queues.redis_trim import trim_acked
from llm_worker.schemas import Job, JobStatus, Result
from llm_worker.service_settings import RedisSettings
from tests.brokers import redis_env, run_script
from tests.queues.reply_dropper import ReplyDropper

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]


def _jobs(n: int, stem: str = "job") -> list[Job]:
    return [Job(id=f"{stem}-{i}", prompt=f"prompt {i}") for i in range(n)]


def _source(settings: RedisSettings, consumer: str, claim_idle_ms: int = 60_000):
    return RedisStreamSource(settings, RedisSourceConfig(consumer, claim_idle_ms, 3600.0))


@pytest.fixture
def settings(redis_url: str, unique_name: str) -> RedisSettings:
    return RedisSettings(url=redis_url, prefix=unique_name)


async def _enqueue(settings: RedisSettings, jobs: list[Job]) -> None:
    async with RedisProducer(settings) as producer:
        await producer.enqueue_many(jobs)


async def test_receive_honours_count_and_ack_empties_pending(settings: RedisSettings) -> None:
    await _enqueue(settings, _jobs(10))
    source = _source(settings, "w1")
    await source.start()
    first = await source.receive(4, 0.1)
    assert [d.key for d in first] == [f"job-{i}" for i in range(4)]
    assert all(d.delivery_count == 1 for d in first)
    assert await source.receive(0, 0.05) == []
    rest = await source.receive(100, 0.1)
    assert len(rest) == 6
    for delivery in first + rest:
        await source.ack(delivery)
    keys = RedisKeys(settings.prefix)
    redis = aioredis.Redis.from_url(settings.url)
    assert (await redis.xpending(keys.jobs_stream, keys.group))["pending"] == 0
    await redis.aclose()
    await source.close()


async def test_restart_replays_own_pending_first(settings: RedisSettings) -> None:
    await _enqueue(settings, _jobs(5))
    source = _source(settings, "w1")
    await source.start()
    held = await source.receive(3, 0.1)
    await source.close()  # "crash": nothing acked

    restarted = _source(settings, "w1")
    await restarted.start()
    replayed = await restarted.receive(10, 0.1)
    assert [d.key for d in replayed] == [d.key for d in held]
    assert all(d.delivery_count == 2 for d in replayed)
    fresh = await restarted.receive(10, 0.1)
    assert [d.key for d in fresh] == ["job-3", "job-4"]
    await restarted.close()


async def test_idle_entries_of_a_dead_consumer_are_claimed(settings: RedisSettings) -> None:
    await _enqueue(settings, _jobs(3))
    dead = _source(settings, "dead", claim_idle_ms=300)
    await dead.start()
    assert len(await dead.receive(3, 0.1)) == 3
    await dead.close()

    alive = _source(settings, "alive", claim_idle_ms=300)
    await alive.start()
    assert await alive.receive(10, 0.1) == []  # not idle long enough yet
    await asyncio.sleep(0.5)
    claimed = await alive.receive(10, 0.1)
    assert sorted(d.key for d in claimed) == ["job-0", "job-1", "job-2"]
    assert all(d.delivery_count == 2 for d in claimed)
    await alive.close()


async def test_lease_renewal_keeps_a_long_job(settings: RedisSettings) -> None:
    await _enqueue(settings, _jobs(1))
    holder = _source(settings, "holder", claim_idle_ms=900)  # renewed every 300 ms
    await holder.start()
    assert len(await holder.receive(1, 0.1)) == 1
    thief = _source(settings, "thief", claim_idle_ms=900)
    await thief.start()
    for _ in range(9):  # 2.7 s, three times the idle threshold
        await asyncio.sleep(0.3)
        assert await thief.receive(1, 0.05) == []
    await holder.close()
    await asyncio.sleep(1.2)
    assert [d.key for d in await thief.receive(1, 0.1)] == ["job-0"]
    await thief.close()


@pytest.mark.parametrize(("command", "deliveries"), [(b"XPENDING", 1), (b"XREADGROUP", 2)])
async def test_a_lost_reply_is_retried_and_its_jobs_come_back(
    settings: RedisSettings, command: bytes, deliveries: int
) -> None:
    """A command reached the server but its reply was lost, as on a half-open connection. The
    client must give up on that connection after socket_timeout_s instead of waiting forever.
    A lost XREADGROUP left the jobs pending on this consumer: they come back through the idle
    claim, counted as a second delivery."""
    await _enqueue(settings, _jobs(3))
    async with ReplyDropper(settings.url) as dropper:
        flaky = settings.model_copy(update={"url": dropper.url, "socket_timeout_s": 1.0})
        source = _source(flaky, "w1", claim_idle_ms=400)
        await source.start()  # PING and XGROUP CREATE go through untouched
        dropper.drop_next_reply_to(command)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        got: list = []
        while len(got) < 3 and loop.time() < deadline:
            got += await source.receive(3, 0.1)
        await source.close()
    assert dropper.dropped == 1
    assert sorted(d.key for d in got) == ["job-0", "job-1", "job-2"]
    assert [d.delivery_count for d in got] == [deliveries] * 3


async def test_dead_letter_records_reason_and_acks(settings: RedisSettings) -> None:
    keys = RedisKeys(settings.prefix)
    redis = aioredis.Redis.from_url(settings.url)
    await redis.xadd(keys.jobs_stream, {"junk": b"\xff"})
    source = _source(settings, "w1")
    await source.start()
    [delivery] = await source.receive(1, 0.1)
    assert delivery.error is not None
    await source.dead_letter(delivery, delivery.error)
    [(_, fields)] = await redis.xrange(keys.dead_letter_stream)
    assert fields[b"reason"] == b"stream entry has no `job` field"
    assert (await redis.xpending(keys.jobs_stream, keys.group))["pending"] == 0
    await redis.aclose()
    await source.close()


async def test_trimming_never_drops_unacked(settings: RedisSettings) -> None:
    await _enqueue(settings, _jobs(300))
    source = _source(settings, "w1")
    await source.start()
    deliveries = await source.receive(300, 0.1)
    for delivery in deliveries[:150] + deliveries[200:]:
        await source.ack(delivery)
    keys = RedisKeys(settings.prefix)
    redis = aioredis.Redis.from_url(settings.url)
    await trim_acked(redis, keys.jobs_stream)
    left = {f[b"id"].decode() for _, f in await redis.xrange(keys.jobs_stream)}
    assert {d.key for d in deliveries[150:200]} <= left  # the un-acked ones all survive
    assert len(left) < 300  # and acked ones before them went
    await redis.aclose()
    await source.close()


async def test_result_store_first_terminal_result_wins(settings: RedisSettings) -> None:
    store = RedisResultStore(settings, ttl_s=60, results_stream_maxlen=1000)
    await store.start()
    await store.mark_running(["a"])
    async with RedisProducer(settings) as producer:
        assert await producer.status("a") == JobStatus.RUNNING
        assert await store.publish(Result(id="a", status=JobStatus.COMPLETED, text="one"))
        assert not await store.publish(Result(id="a", status=JobStatus.FAILED))
        await store.mark_running(["a"])
        assert await producer.status("a") == JobStatus.COMPLETED
        assert (await producer.result("a")).text == "one"  # type: ignore[union-attr]
        await producer.cancel("b")
    assert await store.cancelled(["a", "b"]) == {"b"}
    await store.close()


async def test_wrong_password_fails_at_start_with_clear_error(unique_name: str) -> None:
    env = {**redis_env(16399, "right-password"), "REDIS_DATA_DIR": f"/tmp/{unique_name}"}
    run_script("start_redis.sh", env=env)
    try:
        bad = RedisSettings(url="redis://127.0.0.1:16399/0", password="wrong")
        source = _source(bad, "w1")
        with pytest.raises(BrokerAuthError, match="rejected the credentials"):
            await source.start()
        await source.close()
    finally:
        run_script("start_redis.sh", "stop", env=env)
