"""The worker: broker intake -> engine thread -> settlement, on one asyncio loop.

Invariants: every delivery ends in exactly one terminal record (a result or a dead letter),
written before it is acked; a job id is bound to its content, so a copy of a settled job is
acked unrun and another job reusing the id is dead-lettered; at most `max_in_flight` jobs are
held, and the source is asked for no more than the free slots; a job whose worker died while
it ran runs again apart from fresh jobs, so a job that kills workers is dead-lettered by itself
(worker/quarantine.py); nothing a message carries can crash the loop.
"""

import asyncio
import contextlib
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any

from llm_worker import admission
from llm_worker.admission import AdmissionRules, Join, Known, PlannedStart, Settle, Start
from llm_worker.engine_thread import Crashed, EngineEvent, EngineThread, Finished
from llm_worker.intake import IntakeLimits, Parsed, Refusal, parse_delivery
from llm_worker.jobs import (
    Provenance,
    ServedModel,
    build_result,
    failed_result,
    job_constraint,
)
from llm_worker.quarantine import Quarantine
from llm_worker.queues.factory import is_transient
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.protocol import (
    Claim,
    Delivery,
    JobSource,
    Outcome,
    ResultSink,
    Screened,
)
from llm_worker.queues.retry import Backoff, retrying
from llm_worker.schemas import ErrorCode, Job, JobStatus, Result
from llm_worker.service_settings import ServiceSettings
from llm_worker.settle import HAND_BACK, InFlight, Settler, aborts_due
from llm_worker.telemetry import Telemetry

log = logging.getLogger(__name__)



class EngineCrashed(RuntimeError):
    """The engine thread died; in-flight jobs were handed back un-acked."""


class Service:
    def __init__(
        self, settings: ServiceSettings, source: JobSource, sink: ResultSink, engine: Any,
        served_model: str, telemetry: Telemetry | None = None,
    ) -> None:
        self._settings = settings
        self._telemetry = telemetry
        self.last_tick_s = time.monotonic()  # liveness: the loop's _watch task moves it
        self.consumer_lag: int | None = None  # refreshed every lag_interval_s for the gauge
        self._next_lag_s = 0.0
        self.ready = False
        self._source = source
        self._sink = sink
        self._engine = engine
        self._served = ServedModel(served_model, engine.tokenizer,
                                   engine.runner.model.config.vocab_size)
        self._limits = IntakeLimits(settings.max_job_bytes, settings.max_json_depth)
        self._rules = AdmissionRules(settings.worker_id, settings.max_deliveries,
                                     settings.max_solo_deaths)
        # Default: twice the engine's batch, so finished sequences are replaced from the engine's
        # own waiting queue at once instead of after a broker round trip.
        self.max_in_flight = settings.max_in_flight or 2 * engine.max_num_seqs
        self.jobs: dict[str, InFlight] = {}  # received and not yet settled
        self.suspects = Quarantine(max_group=self.max_in_flight)
        self.num_in_engine = 0
        self.peak_held = 0  # most jobs received and not yet acked at once
        self._stopping = asyncio.Event()
        self._crash: BaseException | None = None
        self._settler = Settler(source.settlement(sink), self.jobs, self._span, telemetry)

    @property
    def _source_name(self) -> str:
        s = self._settings
        return s.kafka.jobs_topic if s.queue == "kafka" else RedisKeys(s.redis.prefix).jobs_stream

    def _span(self, operation: str, job: object) -> contextlib.AbstractContextManager[object]:
        """A receive / settle span in the job's trace, when telemetry is on and the job parsed."""
        if self._telemetry is None or not isinstance(job, Job):
            return contextlib.nullcontext()
        return self._telemetry.job_span(operation, job.id, job.traceparent, self._source_name)

    def is_live(self) -> bool:
        return time.monotonic() - self.last_tick_s < self._settings.liveness_timeout_s

    def stop(self) -> None:
        """Begin graceful shutdown (safe to call from a signal handler)."""
        self._stopping.set()

    async def run(self, queues_started: bool = False) -> None:
        """Serve until stop(); raises EngineCrashed if the engine thread died."""
        if not queues_started:
            await self._sink.start()
            await self._source.start()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._thread = EngineThread(self._engine, events)
        self._thread.start()
        tasks = [asyncio.create_task(self._intake()), asyncio.create_task(self._outputs(events)),
                 asyncio.create_task(self._watch())]
        self.ready = True
        log.info("worker %s serving %s from %s (at most %d jobs in flight)",
                 self._settings.worker_id, self._served.name, self._settings.queue,
                 self.max_in_flight)
        await self._stopping.wait()
        self.ready = False
        log.info("stopping: no new jobs; %d in flight get %.0f s to finish",
                 len(self.jobs), self._settings.shutdown_grace_s)
        tasks[0].cancel()
        await self._drain()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._thread.stop()
        await self._source.close()
        await self._sink.close()
        if self._crash is not None:
            raise EngineCrashed(str(self._crash)) from self._crash

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period; hand the rest back un-acked."""
        deadline_s = time.monotonic() + self._settings.shutdown_grace_s
        while self.num_in_engine and time.monotonic() < deadline_s and self._crash is None:
            await asyncio.sleep(0.05)
        if self._crash is None:
            for job_id in list(self.jobs):
                self._abort(job_id, HAND_BACK)
        # The aborts come back within a step; waiting for them leaves the engine clean.
        abort_deadline_s = time.monotonic() + 5.0
        while self.num_in_engine and time.monotonic() < abort_deadline_s and self._crash is None:
            await asyncio.sleep(0.01)
        await self._settler.wait(timeout_s=max(1.0, deadline_s - time.monotonic()))

    async def _intake(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                await self._intake_once()
            except Exception as exc:  # keep serving: log, back off, try again
                if is_transient(exc):
                    log.warning("broker unavailable, retrying: %r", exc)
                else:
                    log.exception("intake failed, retrying")
                await backoff.wait()
                continue
            backoff.reset()

    async def _intake_once(self) -> None:
        if self.suspects:  # nothing new until every suspect has run apart from fresh jobs
            if not self.jobs:
                group = self.suspects.next_group()
                await self._start_all(group, solo=len(group) == 1)
            free = 0
        else:
            # Count every held job, not only those in the engine, so a slow settlement also
            # holds intake back and the worker never holds more than max_in_flight jobs.
            free = self.max_in_flight - len(self.jobs)
        deliveries = await self._source.receive(free, self._settings.poll_timeout_s)
        if deliveries:
            await self._admit(deliveries)

    async def _admit(self, deliveries: list[Delivery]) -> None:
        # Broker look-ups are made once per batch, not per job: with the engine thread holding
        # the GIL, every await that wakes the loop can cost a switch interval (5 ms). Each is
        # idempotent and retried in place, so a broker blip never leaves a delivery forgotten.
        parsed = [parse_delivery(d, self._limits) for d in deliveries]
        try:
            screened, known = await self._screen(deliveries, parsed)
        except Exception:  # the broker refuses for good: nothing was decided, hand all back
            log.exception("screening %d deliveries failed; handing them back", len(deliveries))
            await self._release(deliveries)
            return
        outcomes: list[Outcome] = []
        starts: dict[str, Start] = {}  # this batch's, by job id
        for delivery, job_or_refusal, screen in zip(deliveries, parsed, screened, strict=True):
            if self._telemetry is not None:
                self._telemetry.job_consumed()
            with self._span("receive", getattr(job_or_refusal, "job", None)):
                decision = admission.decide(delivery, job_or_refusal, screen, known, self._rules)
            if isinstance(decision, Settle):
                log.warning("settling %s at intake: %s", delivery.position,
                            admission.describe(decision.outcome))
                outcomes.append(decision.outcome)
            elif isinstance(decision, Join):
                self._join(decision.job_id, delivery, starts)
            else:
                known.running[decision.parsed.job.id] = decision.parsed.digest
                starts[decision.parsed.job.id] = decision
        await self._settler.commit(outcomes)
        fresh = [start for start in starts.values() if not start.suspect]
        self.suspects.add([start for start in starts.values() if start.suspect])
        fresh.sort(key=lambda start: -start.parsed.job.priority)  # higher priority first
        await self._start_all(fresh, solo=len(fresh) == 1 and not self.jobs)

    async def _screen(self, deliveries: list[Delivery], parsed: list[Parsed | Refusal]
                      ) -> tuple[list[Screened], Known]:
        claims = [Claim(d, p.job.id if isinstance(p, Parsed) else p.job_id, p.digest)
                  for d, p in zip(deliveries, parsed, strict=True)]
        screened = await retrying(functools.partial(self._source.screen, claims), "screening")
        ids = [c.job_id for c in claims if c.job_id is not None]
        known = Known(
            await retrying(functools.partial(self._sink.terminal_results, ids), "results"),
            await retrying(functools.partial(self._sink.cancelled, ids), "cancel flags"),
            {**self.suspects.digests(), **{i: e.run.digest for i, e in self.jobs.items()}},
            datetime.now(UTC))
        return screened, known

    async def _release(self, deliveries: list[Delivery]) -> None:
        try:
            await self._source.release(deliveries)
        except Exception:  # Redis: their leases lapse anyway; Kafka: its commit point waits
            log.exception("handing back %d deliveries failed", len(deliveries))

    def _join(self, job_id: str, delivery: Delivery, starts: dict[str, Start]) -> None:
        """A copy of a job held here (or about to be): acked with it when it settles."""
        if job_id in self.jobs:
            self.jobs[job_id].deliveries.append(delivery)
        elif job_id in starts:
            starts[job_id].copies.append(delivery)
        elif (suspect := self.suspects.find(job_id)) is not None:
            suspect.copies.append(delivery)

    async def _start_all(self, starts: list[Start], solo: bool) -> None:
        """Record each run with the broker, then hand the jobs to the engine."""
        ready, refused = admission.plan_starts(starts, self._served, self._settings.worker_id, solo)
        for outcome in refused:
            log.warning("refusing %s: %s", outcome.deliveries[0].position,
                        admission.describe_refusal(outcome))
        await self._settler.commit(refused)
        if not ready:
            return
        try:
            await retrying(functools.partial(self._source.started, [r.run for r in ready]),
                           "run records")
        except Exception:  # unrecorded, a run must not start: its death would go uncounted
            log.exception("recording %d runs failed; handing them back", len(ready))
            await self._release([d for planned in ready for d in planned.start.deliveries])
            return
        for planned in ready:
            self._submit(planned)
        started = [planned.run.job_id for planned in ready]
        try:
            await retrying(functools.partial(self._sink.mark_running, started), "statuses")
        except Exception as exc:  # a status is for pollers; the job runs all the same
            log.warning("marking %d jobs running failed: %r", len(started), exc)

    def _submit(self, planned: PlannedStart) -> None:
        job = planned.start.parsed.job
        span = None
        if self._telemetry is not None:
            span = self._telemetry.start_process_span(job, self._source_name)
        self.jobs[job.id] = InFlight(job, planned.run, planned.start.deliveries, span=span)
        self.num_in_engine += 1
        self.peak_held = max(self.peak_held, len(self.jobs))
        self._thread.submit(planned.request)

    async def _outputs(self, events: "asyncio.Queue[EngineEvent]") -> None:
        while True:
            event = await events.get()
            if isinstance(event, Crashed):
                await self._crashed(event.error)
                continue
            job_id = event.output.request_id if isinstance(event, Finished) else event.request_id
            entry = self.jobs.get(job_id)
            if entry is None or not entry.in_engine:
                continue
            entry.in_engine = False
            self.num_in_engine -= 1
            if entry.abort_reason == HAND_BACK:
                del self.jobs[job_id]  # the broker delivers it again, to us or another worker
                await self._hand_back(entry)
                continue
            self._settler.add(Outcome(entry.deliveries, self._result_of(entry, event)))

    async def _hand_back(self, entry: InFlight) -> None:
        try:
            await retrying(functools.partial(self._source.hand_back, entry.deliveries),
                           "hand back")
        except Exception:  # its next run then counts this one as a death: safe, only slower
            log.exception("recording the hand-back of %s failed", entry.job.id)

    async def _crashed(self, error: BaseException) -> None:
        """The engine thread died: say why on every job it held, then stop."""
        self._crash = error
        held = [d for entry in self.jobs.values() for d in entry.deliveries]
        try:
            await self._source.note_crash(held, f"engine crashed: {error!r}")
        except Exception:
            log.exception("recording the crash on %d jobs failed", len(held))
        self.stop()

    def _result_of(self, entry: InFlight, event: EngineEvent) -> Result:
        provenance = Provenance(self._settings.worker_id, entry.run.attempts.deaths + 1,
                                entry.run.digest, self._served.name)
        job_id = entry.job.id
        if not isinstance(event, Finished):
            assert not isinstance(event, Crashed)
            return failed_result(job_id, event.code, event.message, provenance)
        if entry.abort_reason == JobStatus.EXPIRED:
            return failed_result(job_id, ErrorCode.EXPIRED, "deadline passed while it ran",
                                 provenance, status=JobStatus.EXPIRED)
        return build_result(job_id, event.output, provenance, job_constraint(entry.job))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.watch_interval_s)
            self.last_tick_s = time.monotonic()
            await self._refresh_lag()
            running = [job_id for job_id, e in self.jobs.items()
                       if e.in_engine and not e.abort_reason]
            try:
                cancelled = await self._sink.cancelled(running)
            except Exception as exc:  # cancel flags are best effort; deadlines still apply
                log.warning("reading cancel flags failed: %r", exc)
                cancelled = set()
            for job_id, reason in aborts_due(self.jobs, running, cancelled, self._source.owns):
                self._abort(job_id, reason)

    async def _refresh_lag(self) -> None:
        if self._telemetry is None or time.monotonic() < self._next_lag_s:
            return
        self._next_lag_s = time.monotonic() + self._settings.lag_interval_s
        try:
            self.consumer_lag = await self._source.lag()
        except Exception as exc:  # a gauge must never disturb the work
            log.debug("reading consumer lag failed: %r", exc)

    def _abort(self, job_id: str, reason: str) -> None:
        entry = self.jobs.get(job_id)
        if entry is not None and entry.in_engine and entry.abort_reason is None:
            entry.abort_reason = reason
            self._thread.abort(job_id)
