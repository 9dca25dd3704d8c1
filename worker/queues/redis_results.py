"""Results in Redis: `<prefix>:result:<id>` JSON and `<prefix>:status:<id>`, both with a TTL,
plus one entry per terminal result on `<prefix>:results`. Also where cancel flags are read."""

import logging
from collections.abc import Sequence

import redis.asyncio as aioredis

from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.redis_conn import make_client, verify
from llm_worker.schemas import JobStatus, Result
from llm_worker.schemas.stored_result import read_result
from llm_worker.service_settings import RedisSettings

log = logging.getLogger(__name__)

# First terminal result wins: a job that ran twice (a stolen lease, a crash after publish)
# still has exactly one result, one final status and one results-stream entry. Bytes under the
# key that are no JSON object of this id (a foreign or broken writer's) are not a result: the
# job's next run replaces them, as terminal_results counts them as none.
_PUBLISH_ONCE = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, found = pcall(cjson.decode, stored)
  if ok and type(found) == 'table' and found['id'] == ARGV[4] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'id', ARGV[4], 'status', ARGV[2])
return 1
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
        """The results stored for these ids; fields a newer version added are dropped
        (schemas/stored_result.py). Bytes that are no result even so count as none: the job runs
        again rather than every batch that carries its id being handed back."""
        if not job_ids:
            return {}
        raws = await self._redis.mget([self._keys.result(job_id) for job_id in job_ids])
        found: dict[str, Result] = {}
        for job_id, raw in zip(job_ids, raws, strict=True):
            if raw is None:
                continue
            try:
                found[job_id] = read_result(raw)
            except ValueError as exc:
                log.warning("the result stored for job %s is unreadable (%s): it counts as none, "
                            "and the job runs", job_id, str(exc)[:200])  # fmt: skip
        return found

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
