"""Telemetry through the real service: Prometheus during a Redis run, traces across the queue."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_worker import client
from llm_worker.queues.memory import MemoryBroker
from llm_worker.schemas import Job, SamplingParams
from llm_worker.service import Service
from llm_worker.service_settings import RedisSettings, ServiceSettings
from llm_worker.telemetry import Telemetry, inject_traceparent

SHARED_PREFIX = "You are a careful assistant. Answer briefly and precisely. " * 6
PARAMS = SamplingParams(temperature=0, max_tokens=3)


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except OSError as e:
        return getattr(e, "code", 0), str(e)


async def _send_and_wait(redis: RedisSettings, jobs: list[Job]) -> None:
    for job in jobs:
        await client.enqueue(job, redis=redis)
    for job in jobs:
        await client.wait(job.id, redis=redis, timeout_s=120)


@pytest.mark.integration
@pytest.mark.slow
def test_prometheus_metrics_move_as_jobs_flow_through_redis(
    redis_url: str, unique_name: str
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "LLM_WORKER_REDIS__PREFIX": unique_name,
        "LLM_WORKER_REDIS__URL": redis_url,
        "LLM_WORKER_METRICS_PORT": str(port),
        "LLM_WORKER_METRICS_HOST": "127.0.0.1",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llm_worker",
            "serve",
            "--worker-id",
            "metrics-w",
            "--max-num-seqs",
            "4",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    redis = RedisSettings(url=redis_url, prefix=unique_name)
    try:
        deadline = time.monotonic() + 120
        while _get(f"{base}/readyz")[0] != 200:
            assert worker.poll() is None and time.monotonic() < deadline, "worker never got ready"
            time.sleep(0.2)
        first = [
            Job(id=f"m-{i}", prompt=f"Question {i}: what is {i} plus {i}?", sampling=PARAMS)
            for i in range(5)
        ]
        asyncio.run(_send_and_wait(redis, first))
        text = _get(f"{base}/metrics")[1]
        assert _metric(text, "llm_worker_jobs_consumed_total") == 5
        assert _metric(text, "llm_worker_jobs_completed_total") == 5
        assert _metric(text, "llm_worker_time_to_first_token_seconds_count") == 5
        assert _metric(text, "gen_ai_client_token_usage_count") == 10  # input + output per job
        hits_before = _metric(text, "llm_worker_prefix_cache_hits")

        asyncio.run(
            _send_and_wait(
                redis, [Job(id="p-1", prompt=SHARED_PREFIX + "Say one.", sampling=PARAMS)]
            )
        )
        asyncio.run(
            _send_and_wait(
                redis, [Job(id="p-2", prompt=SHARED_PREFIX + "Say two.", sampling=PARAMS)]
            )
        )
        text = _get(f"{base}/metrics")[1]
        assert _metric(text, "llm_worker_jobs_completed_total") == 7
        assert _metric(text, "llm_worker_prefix_cache_hits") >= hits_before + 64
        assert _get(f"{base}/healthz")[0] == 200
        assert "messaging_consumer_lag" in text  # from XINFO GROUPS, refreshed every 5 s
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output[-2000:]


@pytest.mark.anyio
async def test_worker_spans_share_the_producers_trace_id(engine) -> None:
    exporter = InMemorySpanExporter()
    producer = TracerProvider()
    producer.add_span_processor(SimpleSpanProcessor(exporter))
    broker = MemoryBroker()
    trace_ids = {}
    for i in range(3):
        with producer.get_tracer("producer").start_as_current_span(f"send {i}") as span:
            job = Job(
                id=f"t-{i}",
                prompt=f"Count to {i + 2}.",
                sampling=PARAMS,
                metadata=inject_traceparent({}),
            )
            trace_ids[job.id] = span.get_span_context().trace_id
        broker.put(job.model_dump_json().encode(), key=job.id)
    telemetry = Telemetry(
        "w1", "smollm2", "memory", span_processors=[SimpleSpanProcessor(exporter)]
    )
    settings = ServiceSettings(
        queue="memory", worker_id="w1", poll_timeout_s=0.05, watch_interval_s=0.05
    )
    service = Service(settings, broker.source(), broker.sink(), engine, "smollm2", telemetry)
    runner = asyncio.create_task(service.run())
    async with asyncio.timeout(120):
        while len(broker.results) < 3:
            await asyncio.sleep(0.02)
    service.stop()
    await runner
    worker_spans = [s for s in exporter.get_finished_spans() if not s.name.startswith("send")]
    operations = sorted(s.attributes["messaging.operation.type"] for s in worker_spans)
    assert operations == ["process"] * 3 + ["receive"] * 3 + ["settle"] * 3
    for span in worker_spans:
        job_id = span.attributes["messaging.message.id"]
        assert span.context.trace_id == trace_ids[job_id]
        if span.attributes["messaging.operation.type"] == "process":
            assert span.attributes["gen_ai.usage.output_tokens"] == 3
    telemetry.shutdown()
