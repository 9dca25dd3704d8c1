"""The worker: broker intake -> engine thread -> publish, on one asyncio loop.

Invariants: a job is acked only after its terminal result is published (at-least-once); the
job id is the idempotency key (a redelivery of a job with a terminal result is acked unrun);
at most `max_in_flight` jobs are in the engine, and the source is asked for no more than the
free slots; a message that cannot run becomes a failed result or a dead letter, never a crash.
"""

import asyncio
import contextlib
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any

from llm_worker.engine_thread import Crashed, EngineEvent, EngineRequest, EngineThread, Finished
from llm_worker.intake import Refusal, parse_delivery
from llm_worker.jobs import JobError, build_result, failed_result, prepare_job
from llm_worker.queues.factory import is_transient
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.protocol import Delivery, JobSource, ResultSink
from llm_worker.queues.retry import Backoff, retrying
from llm_worker.schemas import ErrorCode, Job, JobStatus, Result
from llm_worker.service_settings import ServiceSettings
from llm_worker.settle import InFlight, Settler
from llm_worker.telemetry import Telemetry

log = logging.getLogger(__name__)

_SHUTDOWN = "shutdown"  # abort reason: hand the job back to the broker, publish nothing


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
        self._served_model = served_model
        # Default: twice the engine's batch, so finished sequences are replaced from the engine's
        # own waiting queue at once instead of after a broker round trip.
        self.max_in_flight = settings.max_in_flight or 2 * engine.max_num_seqs
        self.jobs: dict[str, InFlight] = {}  # received and not yet acked
        self.num_in_engine = 0
        self.peak_held = 0  # most jobs received and not yet acked at once
        self._stopping = asyncio.Event()
        self._crash: BaseException | None = None
        self._settler = Settler(source, sink, self.jobs, self._span, settings.worker_id,
                                telemetry)  # fmt: skip

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
                 self._settings.worker_id, self._served_model, self._settings.queue,
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
        for job_id, entry in self.jobs.items():
            if entry.in_engine:
                entry.abort_reason = _SHUTDOWN
                self._thread.abort(job_id)
        # The aborts come back within a step; waiting for them leaves the engine clean.
        abort_deadline_s = time.monotonic() + 5.0
        while self.num_in_engine and time.monotonic() < abort_deadline_s and self._crash is None:
            await asyncio.sleep(0.01)
        await self._settler.wait(timeout_s=max(1.0, deadline_s - time.monotonic()))

    async def _intake(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            # Count every un-acked job, not only those in the engine, so a slow publish also
            # holds intake back and the worker never holds more than max_in_flight jobs.
            free = self.max_in_flight - len(self.jobs)
            try:
                deliveries = await self._source.receive(free, self._settings.poll_timeout_s)
                await self._admit(deliveries)
            except Exception as exc:  # keep serving: log, back off, try again
                if is_transient(exc):
                    log.warning("broker unavailable, retrying: %r", exc)
                else:
                    log.exception("intake failed, retrying")
                await backoff.wait()
                continue
            backoff.reset()

    async def _admit(self, deliveries: list[Delivery]) -> None:
        # Broker look-ups are made once per batch, not per job: with the engine thread holding
        # the GIL, every await that wakes the loop can cost a switch interval (5 ms).
        # Each step is retried in place (all are idempotent), so a broker blip never leaves a
        # received delivery forgotten while its lease is still being renewed.
        parsed = [(d, parse_delivery(d, self._settings.max_job_bytes)) for d in deliveries]
        ids = [p.id for _, p in parsed if isinstance(p, Job)]
        done = await retrying(functools.partial(self._sink.terminal_results, ids), "results")
        ready: list[tuple[Job, Delivery]] = []
        for delivery, job_or_refusal in parsed:
            if self._telemetry is not None:
                self._telemetry.job_consumed()
            with self._span("receive", job_or_refusal):
                job = await retrying(
                    functools.partial(self._screen, delivery, job_or_refusal, done),
                    delivery.position)
            if job is not None:
                ready.append((job, delivery))
        ready.sort(key=lambda pair: -pair[0].priority)  # higher priority reaches the engine first
        ids = [job.id for job, _ in ready]
        cancelled = await retrying(functools.partial(self._sink.cancelled, ids), "cancel flags")
        started: list[str] = []
        for job, delivery in ready:
            if job.id in self.jobs:  # a duplicate of a job we are running: ack with it
                self.jobs[job.id].deliveries.append(delivery)
            elif job.id in cancelled:
                await self._settler.finish(failed_result(
                    job.id, ErrorCode.CANCELLED, "cancelled before it started",
                    status=JobStatus.CANCELLED, worker_id=self._settings.worker_id,
                    attempts=delivery.delivery_count), [delivery])
            elif await self._start(job, delivery):
                started.append(job.id)
        await retrying(functools.partial(self._sink.mark_running, started), "running statuses")

    async def _screen(self, delivery: Delivery, parsed: Job | Refusal,
                      done: dict[str, Result]) -> Job | None:
        """The job to run, or None when the delivery was settled here (result or dead letter)."""
        if delivery.delivery_count > self._settings.max_deliveries:
            job_id = parsed.job_id if isinstance(parsed, Refusal) else parsed.id
            await self._refuse(delivery, Refusal(job_id, ErrorCode.INTERNAL, (
                f"delivered {delivery.delivery_count} times (max_deliveries "
                f"{self._settings.max_deliveries}); workers keep dying on it")), dead_letter=True)
            return None
        if isinstance(parsed, Refusal):
            await self._refuse(delivery, parsed, dead_letter=parsed.job_id is None)
            return None
        if parsed.id in done:
            await self._source.ack(delivery)  # already done by someone: idempotent redelivery
            return None
        if parsed.deadline is not None and parsed.deadline <= datetime.now(UTC):
            await self._settler.finish(failed_result(
                parsed.id, ErrorCode.EXPIRED, "deadline passed before the job started",
                status=JobStatus.EXPIRED, worker_id=self._settings.worker_id,
                attempts=delivery.delivery_count), [delivery])
            return None
        return parsed

    async def _refuse(self, delivery: Delivery, refusal: Refusal, dead_letter: bool) -> None:
        log.warning("refusing %s: %s", delivery.position, refusal.reason)
        if refusal.job_id is not None:
            await self._settler.publish(failed_result(
                refusal.job_id, refusal.code, refusal.message,
                worker_id=self._settings.worker_id, attempts=delivery.delivery_count))
        if dead_letter:
            await self._source.dead_letter(delivery, refusal.reason)
            if self._telemetry is not None:
                self._telemetry.job_dead_lettered()
        else:
            await self._source.ack(delivery)

    async def _start(self, job: Job, delivery: Delivery) -> bool:
        """Hand the job to the engine; False when it was refused instead."""
        try:
            prompt_ids, params = prepare_job(job, self._engine.tokenizer, self._served_model)
        except JobError as exc:
            await self._refuse(delivery, Refusal(job.id, exc.code, exc.message), dead_letter=False)
            return False
        span = None
        if self._telemetry is not None:
            span = self._telemetry.start_process_span(job, self._source_name)
        self.jobs[job.id] = InFlight(job, [delivery], span=span)
        self.num_in_engine += 1
        self.peak_held = max(self.peak_held, len(self.jobs))
        self._thread.submit(EngineRequest(
            job.id, prompt_ids, params, job.priority, job.cache_salt, time.monotonic()))
        return True

    async def _outputs(self, events: "asyncio.Queue[EngineEvent]") -> None:
        while True:
            event = await events.get()
            if isinstance(event, Crashed):
                self._crash = event.error
                self.stop()
                continue
            job_id = event.output.request_id if isinstance(event, Finished) else event.request_id
            entry = self.jobs.get(job_id)
            if entry is None or not entry.in_engine:
                continue
            entry.in_engine = False
            self.num_in_engine -= 1
            if entry.abort_reason == _SHUTDOWN:
                del self.jobs[job_id]  # handed back: the broker redelivers it
                continue
            self._settler.add(self._result_of(entry, event), entry.deliveries)

    def _result_of(self, entry: InFlight, event: EngineEvent) -> Result:
        attempts = entry.deliveries[0].delivery_count
        worker_id = self._settings.worker_id
        if not isinstance(event, Finished):
            assert not isinstance(event, Crashed)
            return failed_result(entry.job.id, event.code, event.message,
                                 worker_id=worker_id, attempts=attempts)
        if entry.abort_reason == JobStatus.EXPIRED:
            return failed_result(entry.job.id, ErrorCode.EXPIRED, "deadline passed while it ran",
                                 status=JobStatus.EXPIRED, worker_id=worker_id, attempts=attempts)
        return build_result(entry.job.id, event.output, worker_id=worker_id, attempts=attempts,
                            model=self._served_model)

    async def _watch(self) -> None:
        """Abort running jobs whose client cancelled them or whose deadline passed."""
        while True:
            await asyncio.sleep(self._settings.watch_interval_s)
            self.last_tick_s = time.monotonic()
            await self._refresh_lag()
            running = [
                job_id for job_id, e in self.jobs.items() if e.in_engine and not e.abort_reason
            ]
            try:
                for job_id in await self._sink.cancelled(running):
                    self._abort(job_id, JobStatus.CANCELLED)
            except Exception as exc:  # cancel flags are best effort; deadlines still apply
                log.warning("reading cancel flags failed: %r", exc)
            now = datetime.now(UTC)
            for job_id in running:
                deadline = self.jobs[job_id].job.deadline if job_id in self.jobs else None
                if deadline is not None and deadline <= now:
                    self._abort(job_id, JobStatus.EXPIRED)

    async def _refresh_lag(self) -> None:
        if self._telemetry is None or time.monotonic() < self._next_lag_s:
            return
        self._next_lag_s = time.monotonic() + self._settings.lag_interval_s
        try:
            self.consumer_lag = await self._source.lag()
        except Exception as exc:  # a gauge must never disturb the work
            log.debug("reading consumer lag failed: %r", exc)

    def _abort(self, job_id: str, reason: JobStatus) -> None:
        entry = self.jobs.get(job_id)
        if entry is not None and entry.in_engine and entry.abort_reason is None:
            entry.abort_reason = reason
            self._thread.abort(job_id)
