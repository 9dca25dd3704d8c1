"""`llm-worker enqueue --file` as run-batch treats a file: a bad line is reported by number with
its reason, every other line goes on the queue (a real redis-server), a summary ends the run
and the exit is non-zero when any line failed."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from llm_worker.queues.keys import RedisKeys
from llm_worker.schemas import Job
from tests.brokers import kafka_bootstrap, redis_url, unique_name
from tests.kafka_read import read_topic

__all__ = ["kafka_bootstrap", "redis_url", "unique_name"]


def _batch_line(custom_id: str, body: dict) -> str:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}
    )


LINES = [
    json.dumps({"id": "job-a", "prompt": "The capital of France is"}),
    _batch_line("batch-b", {"prompt": "1, 2, 3,", "max_tokens": 4}),
    "{not json",
    json.dumps({"id": "job-c", "prompt": "hi", "colour": "red"}),
    "",
    _batch_line("batch-d", {"prompt": "hi", "max_tokens": -1}),
    json.dumps({"id": "job-e", "prompt_token_ids": [1, 2, 3]}),
    json.dumps({"id": "job-f", "prompt": "x" * 600}),
]


def _enqueue(path: Path, url: str, prefix: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    env.update({
        "LLM_WORKER_REDIS__PREFIX": prefix,
        "LLM_WORKER_KAFKA__JOBS_TOPIC": f"{prefix}.jobs",
        "LLM_WORKER_MAX_JOB_BYTES": "512",
    })
    return subprocess.run(
        [sys.executable, "-m", "llm_worker", "enqueue", "--file", str(path), "--redis-url", url,
         *extra],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def _queued(url: str, prefix: str) -> list[Job]:
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(RedisKeys(prefix).jobs_stream)
    finally:
        client.close()
    return [Job.model_validate_json(fields[b"job"]) for _, fields in entries]


@pytest.mark.integration
def test_bad_lines_are_reported_and_the_rest_enqueued(
    tmp_path: Path, redis_url: str, unique_name: str
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    done = _enqueue(path, redis_url, unique_name)
    assert done.returncode == 1, done.stderr
    report = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert report[0].startswith(f"{path} line 3: malformed: not valid JSON")
    assert report[1] == f"{path} line 4: invalid_request: colour: Extra inputs are not permitted"
    assert report[2].startswith(f"{path} line 6: invalid_request: body.max_tokens:")
    assert report[3].startswith(f"{path} line 8: message_too_large: job job-f is ")
    assert report[4] == f"enqueued 3 of 7 jobs from {path}; 4 lines failed (above)"
    assert len(report) == 5
    queued = _queued(redis_url, unique_name)
    assert [job.id for job in queued] == done.stdout.split() == ["job-a", "2-batch-b", "job-e"]
    assert queued[1].prompt == "1, 2, 3," and queued[1].sampling.max_tokens == 4


@pytest.mark.integration
def test_a_clean_file_exits_zero(tmp_path: Path, redis_url: str, unique_name: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(LINES[0] + "\n" + LINES[1] + "\n")
    done = _enqueue(path, redis_url, unique_name)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"enqueued 2 of 2 jobs from {path}"
    assert len(_queued(redis_url, unique_name)) == 2


@pytest.mark.integration
def test_the_good_lines_reach_kafka(tmp_path: Path, kafka_bootstrap: str, unique_name: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    done = _enqueue(path, "redis://127.0.0.1:1/0", unique_name, "--queue", "kafka",
                    "--kafka-bootstrap-servers", kafka_bootstrap)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"enqueued 3 of 7 jobs from {path}; 4 lines failed (above)"
    )
    records = asyncio.run(read_topic(kafka_bootstrap, f"{unique_name}.jobs", min_records=3))
    keyed = {r.key.decode(): Job.model_validate_json(r.value) for r in records}
    assert sorted(keyed) == sorted(done.stdout.split()) == ["2-batch-b", "job-a", "job-e"]
    assert keyed["job-e"].prompt_token_ids == [1, 2, 3]


def test_a_file_of_bad_lines_touches_no_broker(tmp_path: Path) -> None:
    """Nothing to enqueue: no broker is needed to say which lines are wrong."""
    path = tmp_path / "jobs.jsonl"
    path.write_text("[1, 2]\n")
    done = _enqueue(path, "redis://127.0.0.1:1/0", "unused")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"{path} line 1: invalid_request: Input should be a valid dictionary or instance of Job",
        f"enqueued 0 of 1 jobs from {path}; 1 line failed (above)",
    ]


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    done = _enqueue(tmp_path / "nope.jsonl", "redis://127.0.0.1:1/0", "unused")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"llm-worker enqueue: error: cannot read {tmp_path / 'nope.jsonl'}: No such file or "
        "directory"
    )
