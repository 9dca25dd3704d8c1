"""What the service needs from a broker: a source of jobs, a sink for results, and a settlement
that writes each message's one terminal record.

Every delivery ends in exactly one terminal record: its job's result, or a dead letter with the
reason. The job id is bound to the job's content (schemas/digest.py) by the first message that
claims it; a later message that reuses the id for other content is dead-lettered, and one with
the same content is acked without running again.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llm_worker.schemas import Result


@dataclass(frozen=True)
class Delivery:
    """One message as the broker handed it over; nothing in it has been parsed yet."""

    payload: bytes  # the job's JSON as the producer wrote it
    key: str | None  # job id sent beside the payload (Redis field `id`, Kafka key), if any
    delivery_count: int  # 1 on first delivery; Kafka cannot count and always says 1
    handle: object  # broker token for ack / dead_letter (Redis entry id, Kafka offset)
    position: str  # readable origin for logs and dead letters, e.g. "llmw:jobs/1700-0"
    error: str | None = None  # the broker entry itself was unusable (e.g. no `job` field)


@dataclass(frozen=True)
class Attempts:
    """What earlier workers left of a message they took into their engine and never settled:
    each such run ended with its worker's death (a crash, a kill, a lost lease)."""

    deaths: int = 0
    solo_deaths: int = 0  # deaths while it was the only job in its worker's engine
    last_error: str | None = None  # the engine's error, when the worker lived to record it


@dataclass(frozen=True)
class Claim:
    """A delivery's claim on its job id: `digest` is its content's (or its raw bytes', for a
    message that never parsed). `job_id` None: it names no usable id, so it claims none."""

    delivery: Delivery
    job_id: str | None
    digest: str


@dataclass(frozen=True)
class Screened:
    """What the broker knows of a claimed delivery before anything runs."""

    attempts: Attempts
    bound_digest: str | None  # the content its id was already bound to; None: bound to this
    settled: bool = False  # its id's content has a terminal record already (the source knows)
    unbindable: str | None = None  # why this broker cannot bind its id here; it must not run


@dataclass(frozen=True)
class Run:
    """A delivery about to enter the engine, recorded first so a death while it runs counts."""

    delivery: Delivery
    job_id: str
    digest: str
    attempts: Attempts
    solo: bool  # nothing else is in the engine with it


@dataclass(frozen=True)
class Outcome:
    """The terminal record of one job's deliveries: `result` published under its id (None:
    nothing new to publish, e.g. a duplicate of a settled job), and the deliveries acked, or
    moved to the dead letters with `dead_letter` as the reason."""

    deliveries: Sequence[Delivery]
    result: Result | None
    dead_letter: str | None = None


class Settlement(Protocol):
    async def commit(self, outcomes: Sequence[Outcome]) -> None:
        """Write the outcomes' results and dead letters, then ack their deliveries; all of it
        at once where the broker has transactions (Kafka), in that order elsewhere, so a death
        in between leaves a delivery to be redelivered and recognised as settled. Raises when
        the broker refused a record; the caller retries outcomes one by one to find it."""


class JobSource(Protocol):
    async def start(self) -> None:
        """Connect and verify credentials; raises BrokerAuthError or BrokerUnavailable."""

    async def receive(self, max_jobs: int, timeout_s: float) -> list[Delivery]:
        """Up to `max_jobs` deliveries, waiting at most `timeout_s`. Called with 0 while the
        engine is full: the source must keep its broker session alive but hand out nothing."""

    async def screen(self, claims: Sequence[Claim]) -> list[Screened]:
        """Bind each claimed id to its digest unless it is bound already (first claim wins),
        and report the deliveries' earlier attempts; one answer per claim, in order."""

    async def started(self, runs: Sequence[Run]) -> None:
        """Record that these deliveries are entering the engine, before they do."""

    async def hand_back(self, deliveries: Sequence[Delivery]) -> None:
        """These runs were stopped on purpose (shutdown, a partition moved): not a death."""

    async def note_crash(self, deliveries: Sequence[Delivery], error: str) -> None:
        """The engine died while these ran: their next screening reports `error`."""

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give back deliveries this worker cannot settle now (the broker refused to screen
        them): the broker delivers them again, here or to another worker."""

    def settlement(self, sink: "ResultSink") -> Settlement:
        """How outcomes of this source's deliveries are written, publishing through `sink`."""

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """The jobs' terminal records are written: never deliver them again."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message aside with the reason (its payload cut to a bounded size), then
        ack it."""

    def owns(self, delivery: Delivery) -> bool:
        """False once the broker gave the delivery to another worker (a Kafka partition moved):
        its job should stop, as its outcome can no longer be written here."""

    async def lag(self) -> int | None:
        """Jobs waiting in the broker that this consumer group has not been handed yet (consumer
        lag), or None when the broker cannot tell."""

    async def close(self) -> None:
        """Commit what is finished; un-acked deliveries go back to the broker for others."""


class ResultSink(Protocol):
    async def start(self) -> None: ...

    async def publish(self, result: Result) -> bool:
        """Publish a terminal result. False: one already existed and was left as it was."""

    async def publish_many(self, results: Sequence[Result]) -> None:
        """publish() for each (first terminal result still wins), in as few broker calls as
        the broker allows; raises if any could not be published."""

    async def terminal_results(self, job_ids: Sequence[str]) -> dict[str, Result]:
        """The published terminal results among `job_ids` that this sink can know of.
        Batched: the service asks once per received batch, not once per job."""

    async def mark_running(self, job_ids: Sequence[str]) -> None:
        """Status `running` for each, unless it already has a terminal result."""

    async def cancelled(self, job_ids: Sequence[str]) -> set[str]:
        """The subset of `job_ids` that clients asked to cancel."""

    async def close(self) -> None: ...
