"""Settling jobs: each delivery's terminal record written through the broker's settlement.

Jobs that finish together are settled together: one settlement call per batch (one publish and
one ack on Redis, one transaction on Kafka), so a step that finishes 100 jobs costs a couple of
round trips, not 200. A batch the broker refuses is settled one outcome at a time to isolate
the refused record; a result that cannot be published is replaced by a failed one saying why,
and an outcome that cannot be written at all is dead-lettered rather than lost.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from llm_worker.jobs import Provenance, failed_result
from llm_worker.queues.protocol import Delivery, Outcome, Run, Settlement
from llm_worker.queues.retry import retrying
from llm_worker.schemas import ErrorCode, Job, JobStatus, Result
from llm_worker.telemetry import Telemetry

log = logging.getLogger(__name__)

_UNPUBLISHABLE = "result could not be published"


HAND_BACK = "hand back"  # abort reason: the broker gets the job back, nothing is published


@dataclass
class InFlight:
    job: Job
    run: Run  # as recorded with the broker before the job entered the engine
    deliveries: list[Delivery]  # the first, plus copies that arrived while it ran
    in_engine: bool = True
    abort_reason: str | None = None  # a JobStatus value or the service's hand-back marker
    span: Any = None  # the telemetry span of its processing, when telemetry is on


class Settler:
    def __init__(
        self,
        settlement: Settlement,
        jobs: dict[str, InFlight],  # the service's; a settled job leaves it
        span: Callable[[str, object], contextlib.AbstractContextManager[object]],
        telemetry: Telemetry | None,
    ) -> None:
        self._settlement, self._jobs, self._span = settlement, jobs, span
        self._telemetry = telemetry
        self._pending: list[Outcome] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, outcome: Outcome) -> None:
        """Queue a finished job; the settling task takes everything queued before it runs."""
        self._pending.append(outcome)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._settle_pending())

    async def wait(self, timeout_s: float) -> None:
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=timeout_s)

    async def _settle_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await self.commit(batch)

    async def commit(self, outcomes: Sequence[Outcome]) -> None:
        """Write the outcomes, retried through broker outages; never raises."""
        if not outcomes:
            return
        try:
            with contextlib.ExitStack() as spans:
                for outcome in outcomes:
                    spans.enter_context(self._span("settle", self._job_of(outcome)))
                await retrying(functools.partial(self._settlement.commit, outcomes), "settle")
        except Exception:
            if len(outcomes) > 1:
                log.exception("settling %d jobs at once failed; one by one", len(outcomes))
                for outcome in outcomes:
                    await self.commit([outcome])
                return
            await self._commit_replacement(outcomes[0])
            return
        for outcome in outcomes:
            self._settled(outcome)

    async def _commit_replacement(self, outcome: Outcome) -> None:
        """The broker refused this outcome: publish a failed result saying so instead, or
        failing that, dead-letter its deliveries without a result, or failing that, leave them
        to be redelivered."""
        refused = outcome.result
        if refused is not None and not _is_replacement(refused):
            log.exception("the result of %s was refused; publishing a failure instead",
                          refused.id)
            fallback = failed_result(
                refused.id, ErrorCode.INTERNAL, _UNPUBLISHABLE,
                Provenance(refused.worker_id, refused.attempts, refused.job_digest))
            await self.commit([replace(outcome, result=fallback)])
            return
        if refused is not None:
            self._forget(refused.id)
            log.exception("settling %s failed; dead-lettering it", refused.id)
            await self.commit([Outcome(outcome.deliveries, None,
                                       dead_letter=f"{ErrorCode.INTERNAL}: {_UNPUBLISHABLE}")])
            return
        log.exception("settling %s failed; leaving it to redelivery",
                      ", ".join(d.position for d in outcome.deliveries))

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def _job_of(self, outcome: Outcome) -> Job | None:
        entry = self._jobs.get(outcome.result.id) if outcome.result is not None else None
        return entry.job if entry is not None else None

    def _settled(self, outcome: Outcome) -> None:
        result = outcome.result
        entry = self._jobs.pop(result.id, None) if result is not None else None
        if self._telemetry is None:
            return
        if outcome.dead_letter is not None:
            self._telemetry.job_dead_lettered()
        if result is not None:
            self._telemetry.job_settled(result)
            if entry is not None and entry.span is not None:
                self._telemetry.end_process_span(entry.span, entry.job, result)


def _is_replacement(result: Result) -> bool:
    return result.error is not None and result.error.message == _UNPUBLISHABLE


def aborts_due(jobs: dict[str, InFlight], running: list[str], cancelled: set[str],
               owns: Callable[[Delivery], bool]) -> list[tuple[str, str]]:
    """Running jobs to abort, and why: a client cancelled it, its delivery went to another
    worker (handed back: it publishes nothing), or its deadline passed."""
    now = datetime.now(UTC)
    due = []
    for job_id in running:
        entry = jobs.get(job_id)
        if entry is None:
            continue
        if job_id in cancelled:
            due.append((job_id, JobStatus.CANCELLED.value))
        elif not all(owns(d) for d in entry.deliveries):
            due.append((job_id, HAND_BACK))
        elif entry.job.deadline is not None and entry.job.deadline <= now:
            due.append((job_id, JobStatus.EXPIRED.value))
    return due
