"""`llm-worker run-batch`: an OpenAI batch JSONL file through the same service that serves
Redis and Kafka, over the JSONL queue (worker/queues/jsonl.py), in one process with no broker.

Lines are read only as the service has room (at most `max_in_flight` jobs at once) and results
are written as each job finishes, so memory stays flat whatever the file's length. Output order
follows completion; `custom_id` ties each output line to its input.
"""

import asyncio
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.queues.jsonl import BatchCounts, JsonlBatch
from llm_worker.service import Service
from llm_worker.service_settings import ServiceSettings

POLL_S = 0.02


@dataclass
class BatchSummary(BatchCounts):
    """The JSONL queue's counts plus the run's wall time."""

    elapsed_s: float = 0.0

    @classmethod
    def of(cls, counts: BatchCounts, elapsed_s: float) -> "BatchSummary":
        return cls(**asdict(counts), elapsed_s=elapsed_s)

    def describe(self) -> str:
        t = max(self.elapsed_s, 1e-9)
        total = self.num_prompt_tokens + self.num_output_tokens
        return (
            f"Processed {self.num_lines} requests ({self.num_failed} failed) in {t:.2f} s\n"
            f"Throughput: {self.num_lines / t:.2f} requests/s, {total / t:.2f} total tokens/s, "
            f"{self.num_output_tokens / t:.2f} output tokens/s"
        )


def _count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _lines(f: IO[str]) -> Iterator[tuple[int, str]]:
    for line_no, raw in enumerate(f, start=1):
        if raw.strip():
            yield line_no, raw


async def _serve_batch(engine: LLMEngine, served_model: str, batch: JsonlBatch, cap: int) -> None:
    settings = ServiceSettings(
        queue="jsonl",
        worker_id="run-batch",
        max_in_flight=cap,
        poll_timeout_s=POLL_S,
        watch_interval_s=0.25,
    )
    service = Service(settings, batch.source(), batch.sink(), engine, served_model)
    runner = asyncio.create_task(service.run())
    while not batch.done and not runner.done():
        await asyncio.sleep(POLL_S)
    service.stop()
    await runner  # raises EngineCrashed if the engine died


def run_batch(
    engine: LLMEngine,
    served_model: str,
    input_path: Path,
    output_path: Path,
    max_in_flight: int | None = None,
    show_progress: bool = True,
) -> BatchSummary:
    cap = max_in_flight or 2 * engine.max_num_seqs
    start = time.perf_counter()
    with (
        input_path.open(encoding="utf-8", errors="replace") as fin,
        output_path.open("w", encoding="utf-8") as fout,
        tqdm(
            total=_count_lines(input_path), unit="req", disable=not show_progress, desc="run-batch"
        ) as progress,
    ):
        batch = JsonlBatch(_lines(fin), fout, on_line=lambda: progress.update(1))
        asyncio.run(_serve_batch(engine, served_model, batch, cap))
    return BatchSummary.of(batch.counts, time.perf_counter() - start)
