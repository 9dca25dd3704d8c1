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

from llm_worker.config import EngineSettings
from llm_worker.engine.block_manager import PrefixCacheStats
from llm_worker.engine.llm_engine import EngineStats, LLMEngine
from llm_worker.http_endpoints import Endpoints
from llm_worker.schemas import ErrorInfo, Job, JobStatus, Result, SamplingParams, Timings, Usage
from llm_worker.telemetry import Telemetry, inject_traceparent


def _metric(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#") and label in line:
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
    telemetry.bind_unreadable_ledger_records(lambda: 2)
    telemetry.bind_unreadable_run_records(lambda: 1)
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
    assert _metric(text, "llm_worker_kafka_ledger_records_unreadable") == 2
    assert _metric(text, "llm_worker_redis_run_records_unreadable") == 1
    stats.prefix_cache.hits = 128
    assert _metric(_get(endpoints, "/metrics")[1], "llm_worker_prefix_cache_hits") == 128
    assert 'gen_ai_token_type="output"' in text
    assert "spec_decode" not in text  # an engine without speculation exports no such series
    assert _get(endpoints, "/readyz")[0] == 503
    state["ready"] = True
    assert _get(endpoints, "/readyz")[0] == 200
    state["live"] = False
    assert _get(endpoints, "/healthz")[0] == 503
    telemetry.shutdown()


def test_spec_decode_counters_equal_the_engines(
    registry: CollectorRegistry, scrape: tuple[Endpoints, dict[str, bool]]
) -> None:
    reader = PrometheusMetricReader()
    registry.register(reader._collector)
    telemetry = Telemetry("w1", "tiny-llama", "memory", metric_readers=[reader])
    settings = EngineSettings(
        model="tiny-llama",
        load_format="dummy",
        device="cpu",
        dtype="float32",
        speculative_method="ngram",
        speculative_adaptive=False,
        # Two decoding sequences run plain, one alone speculates: both step counters move.
        speculative_disable_by_batch_size=2,
    )
    engine = LLMEngine.from_settings(settings)
    telemetry.bind_engine(engine.stats)
    greedy = SamplingParams(temperature=0, ignore_eos=True, max_tokens=32)
    # Repeated n-grams in the prompts (and the dummy model's repetitive output) get drafts kept.
    engine.generate(
        [[5, 6, 7, 8, 9] * 6, [11, 12, 13] * 8],
        [greedy, greedy.model_copy(update={"max_tokens": 6})],
    )
    spec = engine.stats().spec
    assert spec is not None
    assert spec.num_accepted_tokens > 0 and spec.num_steps_plain > 0
    text = _get(scrape[0], "/metrics")[1]
    prefix = "llm_worker_spec_decode"
    assert _metric(text, f"{prefix}_drafts_total") == spec.num_drafts
    assert _metric(text, f"{prefix}_draft_tokens_total") == spec.num_draft_tokens
    assert _metric(text, f"{prefix}_accepted_tokens_total") == spec.num_accepted_tokens
    per_position = f"{prefix}_accepted_tokens_per_position_total"
    assert [
        _metric(text, per_position, f'position="{j}"')
        for j in range(settings.num_speculative_tokens)
    ] == spec.accepted_by_position
    steps = f"{prefix}_steps_total"
    assert _metric(text, steps, 'speculating="true"') == spec.num_steps_speculating
    assert _metric(text, steps, 'speculating="false"') == spec.num_steps_plain
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
