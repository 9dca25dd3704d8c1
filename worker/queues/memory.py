"""In-process broker: the same service with no Redis or Kafka (embedded runs, tests).

Semantics follow the real brokers where the service can tell: un-acked deliveries go back to
the front of the queue on close with their delivery count raised (as after a worker's death:
their run records stay `running`), ids are bound to the first content that claims them, and
the first terminal result of a job wins.
"""

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llm_worker.queues.protocol import (
    Attempts,
    Claim,
    Delivery,
    Run,
    Screened,
)
from llm_worker.queues.publish_then_ack import PublishThenAckSource
from llm_worker.queues.runs import RunRecord
from llm_worker.schemas import JobStatus, Result


@dataclass
class MemoryBroker:
    queued: deque[Delivery] = field(default_factory=deque)
    unacked: dict[int, Delivery] = field(default_factory=dict)
    dead_letters: list[tuple[Delivery, str]] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)  # handles, in order: each should be once
    results: dict[str, Result] = field(default_factory=dict)
    statuses: dict[str, JobStatus] = field(default_factory=dict)
    cancel_requests: set[str] = field(default_factory=set)
    claims: dict[str, str] = field(default_factory=dict)  # job id -> the digest it is bound to
    runs: dict[int, RunRecord] = field(default_factory=dict)  # handle -> its run, until acked
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


class MemoryJobSource(PublishThenAckSource):
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

    async def screen(self, claims: Sequence[Claim]) -> list[Screened]:
        screened = []
        for claim in claims:
            bound = None
            if claim.job_id is not None:
                bound = self._broker.claims.setdefault(claim.job_id, claim.digest)
            run = self._broker.runs.get(_handle(claim.delivery))
            attempts = run.attempts() if run is not None else Attempts()
            if run is not None:
                self._broker.runs[_handle(claim.delivery)] = run.counted()
            screened.append(Screened(attempts, None if bound == claim.digest else bound))
        return screened

    async def started(self, runs: Sequence[Run]) -> None:
        for run in runs:
            self._broker.runs[_handle(run.delivery)] = RunRecord.of(run)

    async def hand_back(self, deliveries: Sequence[Delivery]) -> None:
        self._rewrite(deliveries, RunRecord.handed_back)

    async def note_crash(self, deliveries: Sequence[Delivery], error: str) -> None:
        self._rewrite(deliveries, lambda run: run.crashed(error))

    def _rewrite(self, deliveries: Sequence[Delivery],
                 change: Callable[[RunRecord], RunRecord]) -> None:
        for delivery in deliveries:
            run = self._broker.runs.get(_handle(delivery))
            if run is not None:
                self._broker.runs[_handle(delivery)] = change(run)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in reversed(deliveries):
            if self._broker.unacked.pop(_handle(delivery), None) is not None:
                self._broker.queued.appendleft(_redelivered(delivery))

    async def ack(self, delivery: Delivery) -> None:
        if self._broker.unacked.pop(_handle(delivery), None) is not None:
            self._broker.acked.append(_handle(delivery))
        self._broker.runs.pop(_handle(delivery), None)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await self.ack(delivery)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._broker.dead_letters.append((delivery, reason))
        await self.ack(delivery)

    async def close(self) -> None:
        broker = self._broker
        for handle in sorted(broker.unacked, reverse=True):
            broker.queued.appendleft(_redelivered(broker.unacked.pop(handle)))


def _redelivered(old: Delivery) -> Delivery:
    return Delivery(old.payload, old.key, old.delivery_count + 1, old.handle, old.position)


def _handle(delivery: Delivery) -> int:
    return int(delivery.handle)  # type: ignore[call-overload]


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
