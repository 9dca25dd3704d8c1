"""Settling finished jobs: publish the terminal result, then ack the delivery (at-least-once).

Results that finish together go out together: one publish call and one ack call per batch, so
a step that finishes 100 jobs costs two broker round trips, not 200. A batch the broker refuses
is settled one by one, which isolates the refused result; a result that cannot be published is
replaced by a failed one saying why, and a delivery whose result cannot be published at all is
dead-lettered rather than lost.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_worker.jobs import failed_result
from llm_worker.queues.protocol import Delivery, JobSource, ResultSink
from llm_worker.queues.retry import retrying
from llm_worker.schemas import ErrorCode, Job, Result
from llm_worker.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    job: Job
    deliveries: list[Delivery]  # the first, plus duplicates that arrived while it ran
    in_engine: bool = True
    abort_reason: str | None = None  # a JobStatus value or the service's shutdown marker
    span: Any = None  # the telemetry span of its processing, when telemetry is on


class Settler:
    def __init__(
        self,
        source: JobSource,
        sink: ResultSink,
        jobs: dict[str, InFlight],  # the service's; a settled job leaves it
        span: Callable[[str, object], contextlib.AbstractContextManager[object]],
        worker_id: str,
        telemetry: Telemetry | None,
    ) -> None:
        self._source, self._sink, self._jobs, self._span = source, sink, jobs, span
        self._worker_id = worker_id
        self._telemetry = telemetry
        self._pending: list[tuple[Result, list[Delivery]]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, result: Result, deliveries: list[Delivery]) -> None:
        """Queue a finished job; the settling task takes everything queued before it runs."""
        self._pending.append((result, deliveries))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._settle_pending())

    async def wait(self, timeout_s: float) -> None:
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=timeout_s)

    async def _settle_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await self._finish_many(batch)

    async def finish(self, result: Result, deliveries: list[Delivery]) -> None:
        """Publish, then ack: retried through broker outages so no result is dropped."""
        entry = self._jobs.get(result.id)
        try:
            published = await self.publish(result)
            with self._span("settle", entry.job if entry is not None else None):
                for delivery in deliveries:
                    settle = functools.partial(self._source.ack, delivery) if published else (
                        functools.partial(self._source.dead_letter, delivery,
                                          "its result could not be published"))
                    await retrying(settle, delivery.position)
        except Exception:  # one job's trouble must not stop the worker; it is redelivered
            log.exception("settling %s failed; leaving it to redelivery", result.id)
        finally:
            self._settled(result)

    async def _finish_many(self, batch: list[tuple[Result, list[Delivery]]]) -> None:
        if len(batch) == 1:
            await self.finish(*batch[0])
            return
        results = [result for result, _ in batch]
        try:
            await retrying(functools.partial(self._sink.publish_many, results), "results")
        except Exception:
            log.exception("publishing %d results at once failed; one by one", len(batch))
            for result, deliveries in batch:
                await self.finish(result, deliveries)
            return
        deliveries = [delivery for _, ds in batch for delivery in ds]
        try:
            with contextlib.ExitStack() as spans:
                for result in results:
                    entry = self._jobs.get(result.id)
                    spans.enter_context(self._span("settle", entry.job if entry else None))
                await retrying(functools.partial(self._source.ack_many, deliveries), "acks")
        except Exception:  # published but not acked: redelivered, then acked unrun (done)
            log.exception("acking %d jobs failed; leaving them to redelivery", len(deliveries))
        finally:
            for result in results:
                self._settled(result)

    def _settled(self, result: Result) -> None:
        entry = self._jobs.pop(result.id, None)
        if self._telemetry is not None:
            self._telemetry.job_settled(result)
            if entry is not None and entry.span is not None:
                self._telemetry.end_process_span(entry.span, entry.job, result)

    async def publish(self, result: Result) -> bool:
        """False when the broker refuses even the failed result that replaces a refused one."""
        try:
            await retrying(lambda: self._sink.publish(result), result.id)
            return True
        except Exception as exc:
            log.exception("publishing %s was refused", result.id)
            if result.error is not None and result.error.code == ErrorCode.INTERNAL:
                return False
            fallback = failed_result(
                result.id, ErrorCode.INTERNAL, f"result could not be published: {exc!r}"[:500],
                worker_id=self._worker_id, attempts=result.attempts)
            return await self.publish(fallback)
