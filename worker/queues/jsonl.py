"""OpenAI batch JSONL files as a job source and a result sink, for `run-batch` on the service path.

The source reads a line only when the service has room for it, so memory stays flat whatever the
file's length; the sink writes each result line as its job finishes (match them by custom_id).

A line that is not a usable request is refused here, where its reason is known: it becomes an
error line at once and is logged under the same code. Handed to the service as an unusable
delivery it could only be refused as `malformed`, whatever the parser found.
"""

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from llm_worker.openai_batch import BatchLine, LineError, error_line, parse_line, result_line
from llm_worker.queues.protocol import (
    Attempts,
    Claim,
    Delivery,
    Run,
    Screened,
)
from llm_worker.queues.publish_then_ack import PublishThenAckSource
from llm_worker.schemas import ErrorCode, Result

log = logging.getLogger(__name__)


@dataclass
class BatchCounts:
    num_lines: int = 0
    num_failed: int = 0
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0


@dataclass
class JsonlBatch:
    """Shared state of one batch: the open files, each job's input line, what is outstanding."""

    lines: Iterator[tuple[int, str]]
    out: IO[str]
    on_line: Any = None  # called once per output line (a progress bar's update)
    counts: BatchCounts = field(default_factory=BatchCounts)
    requests: dict[str, BatchLine] = field(default_factory=dict)  # job id -> its input line
    outstanding: set[int] = field(default_factory=set)  # line numbers handed out, not settled
    exhausted: bool = False

    @property
    def done(self) -> bool:
        return self.exhausted and not self.outstanding

    def write(self, record: dict[str, Any], failed: bool) -> None:
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.counts.num_lines += 1
        self.counts.num_failed += int(failed)
        if self.on_line is not None:
            self.on_line()

    def source(self) -> "JsonlJobSource":
        return JsonlJobSource(self)

    def sink(self) -> "JsonlResultSink":
        return JsonlResultSink(self)


class JsonlJobSource(PublishThenAckSource):
    def __init__(self, batch: JsonlBatch) -> None:
        self._batch = batch

    async def start(self) -> None:
        return None

    async def receive(self, max_jobs: int, timeout_s: float) -> list[Delivery]:
        batch = self._batch
        deliveries: list[Delivery] = []
        while len(deliveries) < max_jobs and not batch.exhausted:
            nxt = next(batch.lines, None)
            if nxt is None:
                batch.exhausted = True
                break
            delivery = self._delivery(*nxt)
            if delivery is not None:
                deliveries.append(delivery)
        if not deliveries:
            await asyncio.sleep(timeout_s)
        return deliveries

    def _delivery(self, line_no: int, raw: str) -> Delivery | None:
        """The line's job, or None when the line was refused (its error line written)."""
        try:
            line, job = parse_line(raw, line_no)
        except LineError as exc:
            log.warning("refusing line %d: %s: %s", line_no, exc.code, exc.detail)
            self._batch.write(error_line(exc.custom_id, exc.code, exc.message), True)
            return None
        self._batch.outstanding.add(line_no)
        self._batch.requests[job.id] = line
        return Delivery(job.model_dump_json().encode(), job.id, 1, line_no, f"line {line_no}")

    async def screen(self, claims: Sequence[Claim]) -> list[Screened]:
        # Each line runs once in one process under an id of its own line number: nothing to
        # bind and nothing attempted before.
        return [Screened(Attempts(), None) for _ in claims]

    async def started(self, runs: Sequence[Run]) -> None:
        return None

    async def hand_back(self, deliveries: Sequence[Delivery]) -> None:
        return None

    async def note_crash(self, deliveries: Sequence[Delivery], error: str) -> None:
        return None

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:  # a file delivers a line once: it gets its error line
            await self.dead_letter(delivery, "internal_error: the worker could not admit it")

    async def ack(self, delivery: Delivery) -> None:
        self._batch.outstanding.discard(int(delivery.handle))  # type: ignore[call-overload]

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await self.ack(delivery)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        # The service publishes a failed result first when the job has an id; that result was
        # the line's output, so only a line still unsettled gets one here.
        line = self._batch.requests.pop(delivery.key or "", None)
        if line is not None:
            self._batch.write(error_line(line.custom_id, ErrorCode.INTERNAL, reason), True)
        self._batch.outstanding.discard(int(delivery.handle))  # type: ignore[call-overload]

    async def lag(self) -> int | None:
        return None  # a file does not know its remaining lines without reading them

    async def close(self) -> None:
        return None


class JsonlResultSink:
    def __init__(self, batch: JsonlBatch) -> None:
        self._batch = batch

    async def start(self) -> None:
        return None

    async def publish(self, result: Result) -> bool:
        batch = self._batch
        # Each line is handed out once under its own id, so nothing is published twice; keeping
        # no record of published ids keeps memory flat on a file of any length.
        line = batch.requests.pop(result.id, None)
        if line is None:
            return True
        batch.counts.num_prompt_tokens += result.usage.prompt_tokens
        batch.counts.num_output_tokens += result.usage.completion_tokens
        record = result_line(line, result)
        batch.write(record, failed=record["error"] is not None)
        return True

    async def publish_many(self, results: Sequence[Result]) -> None:
        for result in results:
            await self.publish(result)

    async def terminal_results(self, job_ids: Sequence[str]) -> dict[str, Result]:
        return {}  # a line is never redelivered within one run

    async def mark_running(self, job_ids: Sequence[str]) -> None:
        return None

    async def cancelled(self, job_ids: Sequence[str]) -> set[str]:
        return set()

    async def close(self) -> None:
        return None
