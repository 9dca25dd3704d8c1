"""The Redis source's bookkeeping beyond the stream (real redis-server): ids bound to content by
the first claim, runs recorded before the engine and a death counted once, a run record nobody
can read skipped and its job run again, write-backs only over the record read, dead letters cut
to a bounded size, and a producer that refuses to reuse an id for other content."""

import logging

import pytest
import redis.asyncio as aioredis

from llm_worker.client import JobIdConflict, RedisProducer
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.protocol import Attempts, Claim, Delivery, Run
from llm_worker.queues.redis_results import RedisResultStore
from llm_worker.queues.redis_runs import replace_unchanged
from llm_worker.queues.redis_streams import RedisSourceConfig, RedisStreamSource
from llm_worker.schemas import Job, JobStatus, Result, job_digest
from llm_worker.service_settings import RedisSettings

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]

JOB = Job(id="a", prompt="hello")
OTHER = JOB.model_copy(update={"prompt": "goodbye"})


@pytest.fixture
def settings(redis_url: str, unique_name: str) -> RedisSettings:
    return RedisSettings(url=redis_url, prefix=unique_name)


def _source(settings: RedisSettings, consumer: str) -> RedisStreamSource:
    return RedisStreamSource(settings, RedisSourceConfig(consumer, 60_000, 3600.0))


async def test_first_claim_binds_and_a_run_left_running_counts_one_death(
        settings: RedisSettings) -> None:
    async with RedisProducer(settings) as producer:
        await producer.enqueue_many([JOB])
    dying = _source(settings, "w1")
    await dying.start()
    [delivery] = await dying.receive(1, 0.1)
    claim = Claim(delivery, JOB.id, job_digest(JOB))
    [screened] = await dying.screen([claim])
    assert screened.bound_digest is None and screened.attempts == Attempts()
    await dying.started([Run(delivery, JOB.id, job_digest(JOB), Attempts(), solo=True)])
    await dying.close()  # dies with it running: the record stays `running`

    [first, second] = [_source(settings, "w1"), _source(settings, "w2")]
    await first.start()
    await second.start()
    [again] = await first.receive(1, 0.1)  # its own pending entry, replayed
    [screened] = await first.screen([Claim(again, JOB.id, job_digest(JOB))])
    assert screened.attempts == Attempts(deaths=1, solo_deaths=1)
    [screened] = await second.screen([Claim(again, JOB.id, job_digest(JOB))])
    assert screened.attempts == Attempts(deaths=1, solo_deaths=1)  # counted once, not twice
    [conflict] = await second.screen([Claim(again, JOB.id, job_digest(OTHER))])
    assert conflict.bound_digest == job_digest(JOB)
    await first.close()
    await second.close()


def _claims(deliveries: list[Delivery], jobs: list[Job]) -> list[Claim]:
    by_id = {job.id: job for job in jobs}
    return [Claim(d, d.key, job_digest(by_id[d.key or ""])) for d in deliveries]


def _runs(claims: list[Claim], attempts: list[Attempts]) -> list[Run]:
    return [Run(c.delivery, c.job_id or "", c.digest, a, solo=False)
            for c, a in zip(claims, attempts, strict=True)]


def _skipped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for r in caplog.records if "unreadable run record" in (m := r.getMessage())]


@pytest.mark.parametrize("garbage", [
    b"{not json", b"\xff\xfe",
    b'{"job_id": "job-1", "digest": "d", "deaths": "1", "solo_deaths": 0, "running": true, '
    b'"solo": false}',
])
async def test_an_unreadable_run_record_is_skipped_and_its_job_runs_again(
        settings: RedisSettings, caplog: pytest.LogCaptureFixture, garbage: bytes) -> None:
    jobs = [Job(id=f"job-{i}", prompt=f"prompt {i}") for i in range(3)]
    async with RedisProducer(settings) as producer:
        await producer.enqueue_many(jobs)
    dying = _source(settings, "w1")
    await dying.start()
    claims = _claims(await dying.receive(3, 0.1), jobs)
    await dying.screen(claims)
    await dying.started(_runs(claims, [Attempts()] * 3))
    await dying.close()  # dies with all three running
    keys = RedisKeys(settings.prefix)
    redis = aioredis.Redis.from_url(settings.url)
    bad = str(claims[1].delivery.handle)  # job-1's record, as a buggy or foreign writer left it
    await redis.hset(keys.runs, bad, garbage)

    worker = _source(settings, "w1")
    await worker.start()
    claims = _claims(await worker.receive(3, 0.1), jobs)
    with caplog.at_level(logging.WARNING):
        screened = await worker.screen(claims)
    # job-1 counts as never run before: its death is forgotten with the record, the job is not
    attempts = [s.attempts for s in screened]
    assert attempts == [Attempts(deaths=1), Attempts(), Attempts(deaths=1)]
    [warning] = _skipped(caplog)
    assert f"{keys.runs} field {bad} (" in warning and "job job-1 " in warning
    assert worker.num_unreadable_run_records == 1
    assert not await redis.hexists(keys.runs, bad)  # deleted: it warns once, not at every poll
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await worker.screen(claims)
    assert _skipped(caplog) == [] and worker.num_unreadable_run_records == 1

    store = RedisResultStore(settings, ttl_s=60, results_stream_maxlen=1000)
    await store.start()
    await worker.started(_runs(claims, attempts))
    await store.publish_many([Result(id=j.id, status=JobStatus.COMPLETED, text="ok",
                                     job_digest=job_digest(j)) for j in jobs])
    await worker.ack_many([c.delivery for c in claims])
    assert await worker.receive(3, 0.1) == []  # still serving, nothing raised
    assert sorted(await store.terminal_results([j.id for j in jobs])) == [j.id for j in jobs]
    assert await redis.hlen(keys.runs) == 0
    assert (await redis.xpending(keys.jobs_stream, keys.group))["pending"] == 0
    await store.close()
    await redis.aclose()
    await worker.close()


async def test_a_dead_letter_is_cut_to_size_and_says_what_it_was(settings: RedisSettings) -> None:
    keys = RedisKeys(settings.prefix)
    redis = aioredis.Redis.from_url(settings.url)
    await redis.xadd(keys.jobs_stream, {"id": "big", "job": b"z" * 200_000})
    source = _source(settings, "w1")
    await source.start()
    [delivery] = await source.receive(1, 0.1)
    await source.dead_letter(delivery, "message_too_large: test")
    [(_, fields)] = await redis.xrange(keys.dead_letter_stream)
    assert len(fields[b"payload"]) == 64 * 1024 and fields[b"truncated"] == b"true"
    assert fields[b"original_size"] == b"200000" and len(fields[b"sha256"]) == 64
    assert await redis.hlen(keys.runs) == 0
    await redis.aclose()
    await source.close()


async def test_the_producer_refuses_an_id_bound_to_other_content(settings: RedisSettings) -> None:
    store = RedisResultStore(settings, ttl_s=60, results_stream_maxlen=1000)
    await store.start()
    async with RedisProducer(settings) as producer:
        assert await producer.enqueue_many([JOB]) == ["a"]
        assert await producer.enqueue_many([JOB]) == ["a"]  # the same job again is fine
        with pytest.raises(JobIdConflict, match="'a'"):
            await producer.enqueue_many([Job(id="b", prompt="x"), OTHER])
        keys = RedisKeys(settings.prefix)
        assert await producer._redis.xlen(keys.jobs_stream) == 2  # nothing of the refused call
        await store.publish(Result(id="a", status=JobStatus.COMPLETED, text="hi",
                                   job_digest=job_digest(JOB)))
        assert (await producer.wait("a", 5, expected_digest=job_digest(JOB))).text == "hi"
        with pytest.raises(JobIdConflict, match="answers other content"):
            await producer.result("a", expected_digest=job_digest(OTHER))
    await store.close()


async def test_a_screening_writes_back_only_over_the_record_it_read(
        settings: RedisSettings) -> None:
    keys = RedisKeys(settings.prefix)
    redis = aioredis.Redis.from_url(settings.url)
    await redis.hset(keys.runs, mapping={"1-0": b"read", "2-0": b"newer", "3-0": b"read"})
    applied = await replace_unchanged(redis, keys.runs, {
        "1-0": (b"read", b"counted"),  # unchanged since the read: replaced
        "2-0": (b"read", b"counted"),  # written since by another worker: kept
        "3-0": (b"read", None),  # unchanged, unreadable: deleted
        "4-0": (b"read", b"counted"),  # acked (deleted) since: stays deleted
    })
    assert applied == 2
    assert await redis.hgetall(keys.runs) == {b"1-0": b"counted", b"2-0": b"newer"}
    assert await replace_unchanged(redis, keys.runs, {}) == 0
    await redis.aclose()
