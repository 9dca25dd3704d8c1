"""What happens to one screened delivery before anything runs: settled at once (a refusal, a
conflict, a duplicate, a poison job), joined to a running copy, started, or held in quarantine.

A pure function of what the service and the broker know, so every rule is testable alone. The
order of the rules is the order of precedence: an id bound to other content is never published
under, whatever else is wrong with the message.
"""

import time
from dataclasses import dataclass, field
from datetime import datetime

from llm_worker.engine_thread import EngineRequest
from llm_worker.intake import Parsed, Refusal
from llm_worker.jobs import JobError, Provenance, ServedModel, failed_result, prepare_job
from llm_worker.queues.protocol import Delivery, Outcome, Run, Screened
from llm_worker.schemas import ErrorCode, JobStatus, Result


@dataclass(frozen=True)
class AdmissionRules:
    worker_id: str
    max_deliveries: int  # brokers that count deliveries: more and it never runs again
    max_solo_deaths: int  # workers that died running it alone: that many and it never runs


@dataclass(frozen=True)
class Known:
    """What the service knows of a batch beyond the broker's screening."""

    done: dict[str, Result]  # published terminal results by job id
    cancelled: set[str]  # ids clients asked to cancel
    running: dict[str, str]  # ids in this worker's engine or about to be -> their digests
    now: datetime


@dataclass(frozen=True)
class Settle:
    outcome: Outcome


@dataclass(frozen=True)
class Join:
    """A copy of a job already in this worker: acked with it when it settles."""

    job_id: str


@dataclass
class Start:
    """A job to run. A suspect (a worker died running it) never runs beside fresh jobs: after
    one death it runs with the other suspects only, after more, or one death alone, it runs
    alone; only deaths alone count towards poison, so no job is blamed for its neighbours."""

    delivery: Delivery
    parsed: Parsed
    screened: Screened
    copies: list[Delivery] = field(default_factory=list)  # same job, same content, same batch

    @property
    def suspect(self) -> bool:
        return self.screened.attempts.deaths > 0

    @property
    def runs_alone(self) -> bool:
        attempts = self.screened.attempts
        return attempts.deaths > 1 or attempts.solo_deaths > 0

    @property
    def deliveries(self) -> list[Delivery]:
        return [self.delivery, *self.copies]


Decision = Settle | Join | Start


def decide(delivery: Delivery, parsed: Parsed | Refusal, screened: Screened, known: Known,
           rules: AdmissionRules) -> Decision:
    job_id = parsed.job.id if isinstance(parsed, Parsed) else parsed.job_id
    attempts = screened.attempts
    # A refusal's result carries its raw bytes' digest: a client holding other content sees
    # at once that the result is not for it.
    provenance = Provenance(
        rules.worker_id, max(delivery.delivery_count, attempts.deaths + 1), parsed.digest)
    if job_id is not None and screened.bound_digest is not None:
        return _conflict(delivery, job_id, screened.bound_digest)
    if screened.unbindable is not None:
        return Settle(Outcome([delivery], None,
                              dead_letter=f"{ErrorCode.MISROUTED}: {screened.unbindable}"))
    poison = _poison_reason(delivery, screened, rules)
    if poison is not None:
        failed = None if job_id is None else failed_result(
            job_id, ErrorCode.POISON, poison, provenance)
        return Settle(Outcome([delivery], failed, dead_letter=f"{ErrorCode.POISON}: {poison}"))
    if isinstance(parsed, Refusal):
        if parsed.job_id is None:
            return Settle(Outcome([delivery], None, dead_letter=parsed.reason))
        return Settle(Outcome([delivery], failed_result(
            parsed.job_id, parsed.code, parsed.message, provenance)))
    job = parsed.job
    done = known.done.get(job.id)
    if done is not None and done.job_digest not in (None, parsed.digest):
        return _conflict(delivery, job.id, done.job_digest)
    if screened.settled or done is not None:
        return Settle(Outcome([delivery], None))  # a copy of a settled job: ack it, run nothing
    if job.id in known.running:
        if known.running[job.id] != parsed.digest:
            return _conflict(delivery, job.id, known.running[job.id])
        return Join(job.id)
    if job.deadline is not None and job.deadline <= known.now:
        return Settle(Outcome([delivery], failed_result(
            job.id, ErrorCode.EXPIRED, "deadline passed before the job started", provenance,
            status=JobStatus.EXPIRED)))
    if job.id in known.cancelled:
        return Settle(Outcome([delivery], failed_result(
            job.id, ErrorCode.CANCELLED, "cancelled before it started", provenance,
            status=JobStatus.CANCELLED)))
    return Start(delivery, parsed, screened)


def _conflict(delivery: Delivery, job_id: str, bound_digest: str | None) -> Settle:
    reason = (f"{ErrorCode.DUPLICATE_ID}: job id {job_id!r} is bound to other content "
              f"({bound_digest}); this message was not run and publishes nothing")
    return Settle(Outcome([delivery], None, dead_letter=reason))


def _poison_reason(delivery: Delivery, screened: Screened, rules: AdmissionRules) -> str | None:
    attempts = screened.attempts
    last_error = attempts.last_error or "unknown: the process ended without recording one"
    if attempts.solo_deaths >= rules.max_solo_deaths:
        return (f"its worker died {attempts.deaths} times while running it "
                f"({attempts.solo_deaths} of them with no other job beside it, max_solo_deaths "
                f"{rules.max_solo_deaths}); last error: {last_error}")
    if delivery.delivery_count > rules.max_deliveries:
        return (f"delivered {delivery.delivery_count} times (max_deliveries "
                f"{rules.max_deliveries}) without a result; last error: {last_error}")
    return None


@dataclass(frozen=True)
class PlannedStart:
    start: Start
    run: Run  # recorded with the broker before the request reaches the engine
    request: EngineRequest


def plan_starts(starts: list[Start], served: ServedModel, worker_id: str, solo: bool
                ) -> tuple[list[PlannedStart], list[Outcome]]:
    """Each job's engine request, or the failed result of a job that cannot run (unknown
    model, a token id outside the vocabulary, a prompt the tokenizer refuses)."""
    ready: list[PlannedStart] = []
    refused: list[Outcome] = []
    for start in starts:
        job, attempts = start.parsed.job, start.screened.attempts
        try:
            prompt_ids, params = prepare_job(job, served)
        except JobError as exc:
            provenance = Provenance(worker_id, attempts.deaths + 1, start.parsed.digest)
            refused.append(Outcome(start.deliveries, failed_result(
                job.id, exc.code, exc.message, provenance)))
            continue
        run = Run(start.delivery, job.id, start.parsed.digest, attempts, solo)
        request = EngineRequest(job.id, prompt_ids, params, job.priority, job.cache_salt,
                                time.monotonic())
        ready.append(PlannedStart(start, run, request))
    return ready, refused


def describe(outcome: Outcome) -> str:
    """One line for the log: what this outcome writes."""
    if outcome.dead_letter is not None:
        return f"dead letter ({outcome.dead_letter[:200]})"
    if outcome.result is None:
        return "a copy of a settled job, acked"
    error = outcome.result.error
    return f"{outcome.result.status.value} ({error.code if error else 'no error'})"


def describe_refusal(outcome: Outcome) -> str:
    """`code: message` of a job refused before it ran: the code its failed result carries."""
    error = outcome.result.error if outcome.result is not None else None
    return f"{error.code}: {error.message}" if error is not None else describe(outcome)
