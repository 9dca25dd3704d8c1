"""Where a Kafka worker's committed results become visible to pollers: the optional Redis
mirror (results, statuses, cancel flags, as the Redis queue keeps them).

The results topic itself is written only by the source's transactional settlement
(worker/queues/kafka_settlement.py), which hands this sink each result after its transaction
committed, so the mirror only ever copies the one committed record of a job (first write wins
there too).
"""

from collections.abc import Sequence

from llm_worker.queues.kafka_conn import verify
from llm_worker.queues.redis_results import RedisResultStore
from llm_worker.schemas import Result
from llm_worker.service_settings import KafkaSettings


class KafkaResultSink:
    def __init__(self, settings: KafkaSettings, mirror: RedisResultStore | None) -> None:
        self._settings = settings
        self._mirror = mirror

    @property
    def has_mirror(self) -> bool:
        return self._mirror is not None

    async def start(self) -> None:
        if self._mirror is not None:
            await self._mirror.start()
        await verify(self._settings)

    async def publish(self, result: Result) -> bool:
        """Copy one committed result to the mirror (True without one)."""
        if self._mirror is not None:
            return await self._mirror.publish(result)
        return True

    async def publish_many(self, results: Sequence[Result]) -> None:
        if self._mirror is not None:
            await self._mirror.publish_many(results)

    async def terminal_results(self, job_ids: Sequence[str]) -> dict[str, Result]:
        # Without a mirror the source's ledger says which ids are settled.
        if self._mirror is not None and job_ids:
            return await self._mirror.terminal_results(job_ids)
        return {}

    async def mark_running(self, job_ids: Sequence[str]) -> None:
        if self._mirror is not None:
            await self._mirror.mark_running(job_ids)

    async def cancelled(self, job_ids: Sequence[str]) -> set[str]:
        if self._mirror is not None:
            return await self._mirror.cancelled(job_ids)
        return set()

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.close()
