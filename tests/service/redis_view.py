"""What a client sees in Redis: results, the results stream, pending entries."""

from collections import Counter

import redis.asyncio as aioredis

from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.redis_conn import make_client
from llm_worker.schemas import Result
from llm_worker.service_settings import RedisSettings


class RedisView:
    def __init__(self, url: str, prefix: str) -> None:
        # The worker's own client settings: it rides out a broker restart with backoff.
        self.redis = make_client(RedisSettings(url=url))
        self.keys = RedisKeys(prefix)

    async def results(self, job_ids: list[str]) -> dict[str, Result]:
        raws = await self.redis.mget([self.keys.result(job_id) for job_id in job_ids])
        return {job_id: Result.model_validate_json(raw)
                for job_id, raw in zip(job_ids, raws, strict=True) if raw is not None}

    async def num_results(self, job_ids: list[str]) -> int:
        return len(await self.results(job_ids))

    async def published_counts(self) -> Counter[str]:
        """How many terminal results were published per job id (the results stream)."""
        entries = await self.redis.xrange(self.keys.results_stream)
        return Counter(fields[b"id"].decode() for _, fields in entries)

    async def pending_by_consumer(self) -> dict[str, int]:
        try:
            consumers = await self.redis.xinfo_consumers(self.keys.jobs_stream, self.keys.group)
        except aioredis.ResponseError:  # group not created yet
            return {}
        return {c["name"].decode(): int(c["pending"]) for c in consumers}

    async def close(self) -> None:
        await self.redis.aclose()
