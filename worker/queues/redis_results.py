"""Results in Redis: `<prefix>:result:<id>` JSON and `<prefix>:status:<id>`, both with a TTL,
plus one entry per terminal result on `<prefix>:results`. Also where cancel flags are read."""

from collections.abc import Sequence

import redis.asyncio as aioredis

from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.redis_conn import make_client, verify
from llm_worker.schemas import JobStatus, Result
from llm_worker.service_settings import RedisSettings

# First terminal result wins: a job that ran twice (a stolen lease, a crash after publish)
# still has exactly one result, one final status and one results-stream entry.
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'id', ARGV[4], 'status', ARGV[2])
  return 1
end
return 0
"""

_MARK_RUNNING = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
end
return 0
"""


class RedisResultStore:
    def __init__(self, settings: RedisSettings, ttl_s: int, results_stream_maxlen: int) -> None:
        self._settings = settings
        self._keys = RedisKeys(settings.prefix)
        self._ttl_s = ttl_s
        self._stream_maxlen = results_stream_maxlen
        self._redis: aioredis.Redis = make_client(settings)

    async def start(self) -> None:
        await verify(self._redis, self._settings)

    async def publish(self, result: Result) -> bool:
        assert result.status.is_terminal, result.status
        created = await self._redis.eval(_PUBLISH_ONCE, 3, *self._publish_args(result))
        return bool(created)

    async def publish_many(self, results: Sequence[Result]) -> None:
        if not results:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for result in results:
                assert result.status.is_terminal, result.status
                pipe.eval(_PUBLISH_ONCE, 3, *self._publish_args(result))
            await pipe.execute()

    def _publish_args(self, result: Result) -> tuple[str | int, ...]:
        return (
            self._keys.result(result.id), self._keys.status(result.id), self._keys.results_stream,
            result.model_dump_json(), result.status.value, self._ttl_s, result.id,
            self._stream_maxlen,
        )

    async def terminal_results(self, job_ids: Sequence[str]) -> dict[str, Result]:
        if not job_ids:
            return {}
        raws = await self._redis.mget([self._keys.result(job_id) for job_id in job_ids])
        return {job_id: Result.model_validate_json(raw)
                for job_id, raw in zip(job_ids, raws, strict=True) if raw is not None}

    async def mark_running(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.eval(_MARK_RUNNING, 2, self._keys.result(job_id), self._keys.status(job_id),
                          JobStatus.RUNNING.value, self._ttl_s)
            await pipe.execute()

    async def cancelled(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        flags = await self._redis.mget([self._keys.cancel(job_id) for job_id in job_ids])
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag is not None}

    async def close(self) -> None:
        await self._redis.aclose()
