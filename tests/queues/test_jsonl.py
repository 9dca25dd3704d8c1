"""The JSONL queue reads only what it is asked for and writes one line per input line."""

import io
import json

import pytest

from llm_worker.queues.jsonl import JsonlBatch
from llm_worker.schemas import JobStatus, Result, Usage

pytestmark = [pytest.mark.anyio]

GOOD = json.dumps(
    {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"prompt": "hi", "max_tokens": 2},
    }
)
BAD = json.dumps(
    {
        "custom_id": "b",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"prompt": "hi", "max_tokens": -1},
    }
)


def _counting(lines: list[str], consumed: list[int]):
    for line_no, raw in enumerate(lines, start=1):
        consumed.append(line_no)
        yield line_no, raw


async def test_reads_lazily_and_settles_every_line() -> None:
    consumed: list[int] = []
    out = io.StringIO()
    batch = JsonlBatch(_counting([GOOD, BAD, GOOD, "{oops"], consumed), out)
    source, sink = batch.source(), batch.sink()
    first = await source.receive(1, 0.0)
    assert consumed == [1] and len(first) == 1 and first[0].error is None
    rest = await source.receive(10, 0.0)
    assert consumed == [1, 2, 3, 4] and batch.exhausted and not batch.done
    bad, good, broken = rest
    await source.dead_letter(bad, "ignored: the parser's reason is kept")
    await source.dead_letter(broken, "ignored")
    for delivery in (first[0], good):
        result = Result(
            id=delivery.key,
            status=JobStatus.COMPLETED,
            text="ok",
            finish_reason="length",
            usage=Usage(prompt_tokens=1, completion_tokens=2),
        )
        await sink.publish(result)
        await source.ack(delivery)
    assert batch.done
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 4 and batch.counts.num_failed == 2
    errors = {line["custom_id"]: line["error"] for line in lines if line["error"]}
    assert errors["b"]["code"] == "invalid_request" and "max_tokens" in errors["b"]["message"]
    assert errors[None]["code"] == "malformed"
    assert batch.counts.num_output_tokens == 4
    assert await sink.terminal_results([first[0].key]) == {}
