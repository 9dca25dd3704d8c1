"""The JSONL queue reads only what it is asked for and writes one line per input line."""

import io
import json
import logging

import pytest

from llm_worker.queues.jsonl import JsonlBatch
from llm_worker.schemas import JobStatus, Result, Usage

pytestmark = [pytest.mark.anyio]


def _request(custom_id: str, max_tokens: int) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "hi", "max_tokens": max_tokens},
        }
    )


GOOD = _request("a", 2)
BAD = _request("b", -1)


def _counting(lines: list[str], consumed: list[int]):
    for line_no, raw in enumerate(lines, start=1):
        consumed.append(line_no)
        yield line_no, raw


def _completed(job_id: str) -> Result:
    return Result(
        id=job_id,
        status=JobStatus.COMPLETED,
        text="ok",
        finish_reason="length",
        usage=Usage(prompt_tokens=1, completion_tokens=2),
    )


async def test_reads_lazily_and_settles_every_line(caplog: pytest.LogCaptureFixture) -> None:
    consumed: list[int] = []
    out = io.StringIO()
    batch = JsonlBatch(_counting([GOOD, BAD, GOOD, "{oops"], consumed), out)
    source, sink = batch.source(), batch.sink()
    first = await source.receive(1, 0.0)
    assert consumed == [1] and len(first) == 1 and first[0].error is None
    with caplog.at_level(logging.WARNING, logger="llm_worker.queues.jsonl"):
        rest = await source.receive(10, 0.0)
    assert consumed == [1, 2, 3, 4] and batch.exhausted and not batch.done
    assert len(rest) == 1, "unusable lines are refused by the source, not handed out"
    for delivery in (first[0], *rest):
        await sink.publish(_completed(delivery.key))
        await source.ack(delivery)
    assert batch.done
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 4 and batch.counts.num_failed == 2
    errors = {line["custom_id"]: line["error"] for line in lines if line["error"]}
    assert errors["b"]["code"] == "invalid_request" and "max_tokens" in errors["b"]["message"]
    assert errors[None]["code"] == "malformed"
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("refusing line 2: invalid_request: body.max_tokens") for m in logged)
    assert any(m.startswith("refusing line 4: malformed: not valid JSON") for m in logged)
    assert batch.counts.num_output_tokens == 4
    assert await sink.terminal_results([first[0].key]) == {}


async def test_a_dead_letter_settles_its_line_once() -> None:
    out = io.StringIO()
    batch = JsonlBatch(_counting([_request("x", 2), _request("y", 2)], []), out)
    source, sink = batch.source(), batch.sink()
    published, unpublished = await source.receive(2, 0.0)
    failed = _completed(published.key).model_copy(update={"status": JobStatus.FAILED})
    await sink.publish(failed)
    await source.dead_letter(published, "internal_error: workers keep dying on it")
    await source.dead_letter(unpublished, "internal_error: workers keep dying on it")
    assert await source.receive(1, 0.0) == [] and batch.done
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["custom_id"] for line in lines] == ["x", "y"]
    assert lines[1]["error"]["message"] == "internal_error: workers keep dying on it"
