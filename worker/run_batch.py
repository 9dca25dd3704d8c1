"""`llm-worker run-batch`: an OpenAI batch JSONL file through the engine, streaming both ends.

Lines are read only as the engine has room (at most `max_in_flight` jobs exist at once) and
results are written as each job finishes, so memory stays flat whatever the file's length.
Output order follows completion; `custom_id` ties each output line to its input.
"""

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from schemas import Job
from worker.engine.llm_engine import LLMEngine, RequestRejected
from worker.jobs import JobError, build_result, prepare_job
from worker.openai_batch import BatchLine, LineError, error_line, parse_line, result_line

log = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    num_lines: int = 0
    num_failed: int = 0
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    elapsed_s: float = 0.0

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


class BatchRunner:
    def __init__(self, engine: LLMEngine, served_model: str, out: IO[str], progress: Any) -> None:
        self.engine = engine
        self.served_model = served_model
        self.out = out
        self.progress = progress
        self.in_flight: dict[str, BatchLine] = {}
        self.summary = BatchSummary()

    def _write(self, record: dict[str, Any], failed: bool) -> None:
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.summary.num_lines += 1
        self.summary.num_failed += int(failed)
        self.progress.update(1)

    def submit(self, raw: str, line_no: int) -> None:
        try:
            line, job = parse_line(raw, line_no)
        except LineError as e:
            self._write(error_line(e.custom_id, e.code, e.message), failed=True)
            return
        try:
            self._add(job)
        except (JobError, RequestRejected) as e:
            self._write(error_line(line.custom_id, e.code, f"line {line_no}: {e.message}"), True)
            return
        self.in_flight[job.id] = line

    def _add(self, job: Job) -> None:
        prompt_ids, params = prepare_job(job, self.engine.tokenizer, self.served_model)
        self.engine.add_request(job.id, prompt_ids, params, priority=job.priority)

    def drain_step(self) -> None:
        for output in self.engine.step():
            line = self.in_flight.pop(output.request_id)
            result = build_result(output.request_id, output, model=self.served_model)
            self.summary.num_prompt_tokens += result.usage.prompt_tokens
            self.summary.num_output_tokens += result.usage.completion_tokens
            self._write(result_line(line, result), failed=False)


def _lines(f: IO[str]) -> Iterator[tuple[int, str]]:
    for line_no, raw in enumerate(f, start=1):
        if raw.strip():
            yield line_no, raw


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
        runner = BatchRunner(engine, served_model, fout, progress)
        lines = _lines(fin)
        exhausted = False
        while True:
            while not exhausted and engine.num_unfinished_requests() < cap:
                nxt = next(lines, None)
                if nxt is None:
                    exhausted = True
                else:
                    runner.submit(nxt[1], nxt[0])
            if not engine.has_unfinished_requests():
                break
            runner.drain_step()
    runner.summary.elapsed_s = time.perf_counter() - start
    return runner.summary
