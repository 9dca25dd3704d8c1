"""Results to a Kafka topic keyed by job id (idempotent producer), optionally mirrored to
Redis so clients can poll, see statuses and cancel."""

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from llm_worker.queues.kafka_conn import client_kwargs, verify
from llm_worker.queues.redis_results import RedisResultStore
from llm_worker.schemas import Result
from llm_worker.service_settings import KafkaSettings

_RECENT_RESULTS = 100_000  # ids remembered without Redis, for redeliveries after a rebalance


class KafkaResultSink:
    def __init__(self, settings: KafkaSettings, mirror: RedisResultStore | None) -> None:
        self._settings = settings
        self._mirror = mirror
        self._recent: OrderedDict[str, Result] = OrderedDict()
        self._producer = AIOKafkaProducer(
            **client_kwargs(settings), enable_idempotence=True, acks="all"
        )

    async def start(self) -> None:
        if self._mirror is not None:
            await self._mirror.start()
        await verify(self._settings)  # the producer would only log why it cannot connect
        await self._producer.start()

    async def publish(self, result: Result) -> bool:
        await self._producer.send_and_wait(
            self._settings.results_topic, result.model_dump_json().encode(),
            key=result.id.encode(),
        )
        self._remember([result])
        if self._mirror is not None:
            return await self._mirror.publish(result)
        return True

    async def publish_many(self, results: Sequence[Result]) -> None:
        # send() only queues a record; awaiting the futures together lets the producer put the
        # whole batch in one request per partition.
        futures = [
            await self._producer.send(
                self._settings.results_topic, r.model_dump_json().encode(), key=r.id.encode()
            )
            for r in results
        ]
        await asyncio.gather(*futures)
        self._remember(results)
        if self._mirror is not None:
            await self._mirror.publish_many(results)

    def _remember(self, results: Sequence[Result]) -> None:
        for result in results:
            self._recent[result.id] = result
        while len(self._recent) > _RECENT_RESULTS:
            self._recent.popitem(last=False)

    async def terminal_results(self, job_ids: Sequence[str]) -> dict[str, Result]:
        found = {i: self._recent[i] for i in job_ids if i in self._recent}
        unknown = [i for i in job_ids if i not in found]
        if self._mirror is not None and unknown:
            found.update(await self._mirror.terminal_results(unknown))
        return found

    async def mark_running(self, job_ids: Sequence[str]) -> None:
        if self._mirror is not None:
            await self._mirror.mark_running(job_ids)

    async def cancelled(self, job_ids: Sequence[str]) -> set[str]:
        if self._mirror is not None:
            return await self._mirror.cancelled(job_ids)
        return set()

    async def close(self) -> None:
        await self._producer.stop()
        if self._mirror is not None:
            await self._mirror.close()
