"""What the service needs from a broker: a source of jobs and a sink for results.

The service acks a delivery only after its result is published (at-least-once); the job id is
the idempotency key, so a redelivered job whose terminal result exists is acked without rerun.
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


class JobSource(Protocol):
    async def start(self) -> None:
        """Connect and verify credentials; raises BrokerAuthError or BrokerUnavailable."""

    async def receive(self, max_jobs: int, timeout_s: float) -> list[Delivery]:
        """Up to `max_jobs` deliveries, waiting at most `timeout_s`. Called with 0 while the
        engine is full: the source must keep its broker session alive but hand out nothing."""

    async def ack(self, delivery: Delivery) -> None:
        """The job's terminal result is published: never deliver it again."""

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """ack() for each, in as few broker calls as the broker allows."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move an unusable message aside with the reason, then ack it."""

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
