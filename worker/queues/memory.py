"""In-process broker: the same service with no Redis or Kafka (embedded runs, tests).

Semantics follow the real brokers where the service can tell: un-acked deliveries go back to
the front of the queue on close with their delivery count raised, and the first terminal result
of a job wins.
"""

import asyncio
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_worker.queues.protocol import Delivery
from llm_worker.schemas import JobStatus, Result


@dataclass
class MemoryBroker:
    queued: deque[Delivery] = field(default_factory=deque)
    unacked: dict[int, Delivery] = field(default_factory=dict)
    dead_letters: list[tuple[Delivery, str]] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)
    statuses: dict[str, JobStatus] = field(default_factory=dict)
    cancel_requests: set[str] = field(default_factory=set)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count = field(default_factory=itertools.count)

    def put(self, payload: bytes, key: str | None = None) -> None:
        handle = next(self._ids)
        self.queued.append(Delivery(payload, key, 1, handle, f"memory/{handle}"))
        if key is not None:
            self.statuses.setdefault(key, JobStatus.QUEUED)
        self._arrived.set()

    def source(self) -> "MemoryJobSource":
        return MemoryJobSource(self)

    def sink(self) -> "MemoryResultSink":
        return MemoryResultSink(self)


class MemoryJobSource:
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    async def start(self) -> None:
        return None

    async def receive(self, max_jobs: int, timeout_s: float) -> list[Delivery]:
        broker = self._broker
        if max_jobs <= 0 or not broker.queued:
            broker._arrived.clear()
            try:
                await asyncio.wait_for(broker._arrived.wait(), timeout_s)
            except TimeoutError:
                return []
        deliveries: list[Delivery] = []
        while broker.queued and len(deliveries) < max_jobs:
            delivery = broker.queued.popleft()
            broker.unacked[int(delivery.handle)] = delivery  # type: ignore[call-overload]
            deliveries.append(delivery)
        return deliveries

    async def lag(self) -> int | None:
        return len(self._broker.queued)

    async def ack(self, delivery: Delivery) -> None:
        self._broker.unacked.pop(int(delivery.handle), None)  # type: ignore[call-overload]

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await self.ack(delivery)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._broker.dead_letters.append((delivery, reason))
        await self.ack(delivery)

    async def close(self) -> None:
        broker = self._broker
        for handle in sorted(broker.unacked, reverse=True):
            old = broker.unacked.pop(handle)
            broker.queued.appendleft(
                Delivery(old.payload, old.key, old.delivery_count + 1, handle, old.position)
            )


class MemoryResultSink:
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    async def start(self) -> None:
        return None

    async def publish(self, result: Result) -> bool:
        if result.id in self._broker.results:
            return False
        self._broker.results[result.id] = result
        self._broker.statuses[result.id] = result.status
        return True

    async def publish_many(self, results: Sequence[Result]) -> None:
        for result in results:
            await self.publish(result)

    async def terminal_results(self, job_ids: Sequence[str]) -> dict[str, Result]:
        return {i: self._broker.results[i] for i in job_ids if i in self._broker.results}

    async def mark_running(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            if job_id not in self._broker.results:
                self._broker.statuses[job_id] = JobStatus.RUNNING

    async def cancelled(self, job_ids: Sequence[str]) -> set[str]:
        return self._broker.cancel_requests.intersection(job_ids)

    async def close(self) -> None:
        return None
