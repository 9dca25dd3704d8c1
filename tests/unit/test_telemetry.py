"""Telemetry: what the Prometheus endpoint shows and how traces join the producer's."""

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from schemas import ErrorInfo, Job, JobStatus, Result, Timings, Usage
from worker.engine.block_manager import PrefixCacheStats
from worker.engine.llm_engine import EngineStats
from worker.http_endpoints import Endpoints
from worker.telemetry import Telemetry, inject_traceparent


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def scrape(registry: CollectorRegistry) -> Iterator[tuple[Endpoints, dict[str, bool]]]:
    state = {"live": True, "ready": False}
    endpoints = Endpoints("127.0.0.1", 0, lambda: state["live"], lambda: state["ready"], registry)
    endpoints.start()
    yield endpoints, state
    endpoints.stop()


def _get(endpoints: Endpoints, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoints.port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_counters_histograms_and_engine_gauges_reach_prometheus(
    registry: CollectorRegistry, scrape: tuple[Endpoints, dict[str, bool]]
) -> None:
    reader = PrometheusMetricReader()
    registry.register(reader._collector)  # one registry per test instead of the global one
    telemetry = Telemetry("w1", "smollm2", "redis", metric_readers=[reader])
    stats = EngineStats(
        num_running=3,
        num_waiting=2,
        kv_cache_usage=0.25,
        prefix_cache=PrefixCacheStats(queries=100, hits=64),
        num_preemptions=1,
        num_computed_tokens=0,
        num_steps=0,
    )
    telemetry.bind_engine(lambda: stats)
    done = Result(
        id="a",
        status=JobStatus.COMPLETED,
        usage=Usage(prompt_tokens=10, completion_tokens=5),
        timings=Timings(ttft_s=0.2, tpot_s=0.01, e2e_s=0.3, queue_s=0.05),
    )
    failed = Result(
        id="b", status=JobStatus.FAILED, error=ErrorInfo(code="invalid_request", message="x")
    )
    for _ in range(3):
        telemetry.job_consumed()
    telemetry.job_settled(done)
    telemetry.job_settled(done)
    telemetry.job_settled(failed)
    endpoints, state = scrape
    status, text = _get(endpoints, "/metrics")
    assert status == 200
    assert _metric(text, "llm_worker_jobs_consumed_total") == 3
    assert _metric(text, "llm_worker_jobs_completed_total") == 2
    assert _metric(text, "llm_worker_jobs_failed_total") == 1
    assert _metric(text, "llm_worker_time_to_first_token_seconds_count") == 2
    assert _metric(text, "llm_worker_num_requests_running") == 3
    assert _metric(text, "llm_worker_prefix_cache_hits") == 64
    stats.prefix_cache.hits = 128
    assert _metric(_get(endpoints, "/metrics")[1], "llm_worker_prefix_cache_hits") == 128
    assert 'gen_ai_token_type="output"' in text
    assert _get(endpoints, "/readyz")[0] == 503
    state["ready"] = True
    assert _get(endpoints, "/readyz")[0] == 200
    state["live"] = False
    assert _get(endpoints, "/healthz")[0] == 503
    telemetry.shutdown()


def test_worker_spans_continue_the_producers_trace() -> None:
    exporter = InMemorySpanExporter()
    producer = TracerProvider()
    producer.add_span_processor(SimpleSpanProcessor(exporter))
    with producer.get_tracer("producer").start_as_current_span("send jobs") as send:
        metadata = inject_traceparent({})
    job = Job(id="j1", prompt="hi", metadata=metadata)
    telemetry = Telemetry("w1", "smollm2", "kafka", span_processors=[SimpleSpanProcessor(exporter)])
    with telemetry.job_span("process", job.id, job.traceparent, "jobs") as span:
        telemetry.annotate(
            span, job, Result(id="j1", status=JobStatus.COMPLETED, finish_reason="stop")
        )
    spans = {s.name: s for s in exporter.get_finished_spans()}
    worker_span = spans["process jobs"]
    assert worker_span.context.trace_id == send.get_span_context().trace_id
    assert (
        worker_span.parent is not None
        and worker_span.parent.span_id == send.get_span_context().span_id
    )
    assert worker_span.attributes["messaging.system"] == "kafka"
    assert worker_span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    telemetry.shutdown()
