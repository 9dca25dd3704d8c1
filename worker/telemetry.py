"""OpenTelemetry meters and spans for the worker, exported to Prometheus (and OTLP if set up).

Metric meanings follow vLLM's (prefix-cache queries/hits in tokens, TTFT, TPOT, e2e, queue time,
running/waiting, KV usage, preemptions) and OTel's `gen_ai.*` / `messaging.*` conventions. Engine
gauges are read from `LLMEngine.stats()` at scrape time, so the engine itself knows nothing of
telemetry.
"""

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate
from opentelemetry.metrics import CallbackOptions, Histogram, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Span, SpanKind

from llm_worker.extras import MissingExtra
from llm_worker.schemas import Job, JobStatus, Result

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


class Telemetry:
    def __init__(
        self,
        worker_id: str,
        model: str,
        messaging_system: str,
        metric_readers: Iterable[MetricReader] = (),
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        resource = Resource.create({"service.name": "llm-worker", "service.instance.id": worker_id})
        self.meter_provider = MeterProvider(resource=resource, metric_readers=list(metric_readers))
        self.tracer_provider = TracerProvider(resource=resource)
        for processor in span_processors:
            self.tracer_provider.add_span_processor(processor)
        self.tracer = self.tracer_provider.get_tracer("llm_worker")
        self.model = model
        self.messaging_system = messaging_system
        meter = self.meter_provider.get_meter("llm_worker")
        self._jobs = {
            name: meter.create_counter(
                f"llm_worker.jobs.{name}", unit="{job}", description=f"jobs {name}"
            )
            for name in ("consumed", "completed", "failed", "expired", "cancelled", "dead_lettered")
        }
        self._meter = meter
        self.ttft = self._latency("time_to_first_token", "receipt to first token")
        self.tpot = self._latency("time_per_output_token", "mean gap after the first token")
        self.e2e = self._latency("e2e_request_latency", "receipt to finish")
        self.queue_time = self._latency("request_queue_time", "receipt to first scheduled")
        hist = meter.create_histogram
        self.token_usage = hist(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="tokens per job by gen_ai.token.type",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )

    def _latency(self, name: str, description: str) -> Histogram:
        return self._meter.create_histogram(
            f"llm_worker.{name}",
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )

    def bind_inter_token_latency(self, engine: Any) -> None:
        """The engine thread reports each gap between a sequence's tokens (histograms are
        thread-safe)."""
        histogram = self._latency("inter_token_latency", "gap between two output tokens")
        attrs = {"gen_ai.request.model": self.model}
        engine.inter_token_latency_observer = lambda gap_s: histogram.record(gap_s, attrs)

    def bind_engine(self, stats: Callable[[], Any]) -> None:
        """Gauges and cumulative counters read from `stats()` (an EngineStats) when scraped."""

        def gauge(
            read: Callable[[Any], float],
        ) -> Callable[[CallbackOptions], Iterator[Observation]]:
            def callback(_: CallbackOptions) -> Iterator[Observation]:
                yield Observation(read(stats()))

            return callback

        m = self._meter
        m.create_observable_gauge(
            "llm_worker.num_requests_running", [gauge(lambda s: s.num_running)]
        )
        m.create_observable_gauge(
            "llm_worker.num_requests_waiting", [gauge(lambda s: s.num_waiting)]
        )
        m.create_observable_gauge(
            "llm_worker.kv_cache_usage",
            [gauge(lambda s: s.kv_cache_usage)],
            unit="1",
            description="fraction of KV blocks in use",
        )
        m.create_observable_counter(
            "llm_worker.prefix_cache.queries",
            [gauge(lambda s: s.prefix_cache.queries)],
            unit="{token}",
            description="prompt tokens looked up in the prefix cache",
        )
        m.create_observable_counter(
            "llm_worker.prefix_cache.hits",
            [gauge(lambda s: s.prefix_cache.hits)],
            unit="{token}",
            description="prompt tokens served by the prefix cache",
        )
        m.create_observable_counter(
            "llm_worker.num_preemptions", [gauge(lambda s: s.num_preemptions)]
        )
        self._bind_spec_decode(stats)

    def _bind_spec_decode(self, stats: Callable[[], Any]) -> None:
        """vLLM's spec_decode_* counters from `stats().spec` (a SpecStats); an engine without
        speculation (spec None) observes nothing, so no series appear for it."""

        def steps(s: Any) -> list[Observation]:
            return [
                Observation(s.num_steps_speculating, {"speculating": "true"}),
                Observation(s.num_steps_plain, {"speculating": "false"}),
            ]

        counters: list[tuple[str, str, str, Callable[[Any], list[Observation]]]] = [
            ("drafts", "{draft}", "sequences verified with drafts, one per sequence and step",
             lambda s: [Observation(s.num_drafts)]),
            ("draft_tokens", "{token}", "draft tokens proposed for verification",
             lambda s: [Observation(s.num_draft_tokens)]),
            ("accepted_tokens", "{token}", "draft tokens the target kept",
             lambda s: [Observation(s.num_accepted_tokens)]),
            ("accepted_tokens_per_position", "{token}", "draft tokens kept at each position",
             lambda s: [Observation(n, {"position": j})
                        for j, n in enumerate(s.accepted_by_position)]),
            ("steps", "{step}", "pure decode steps, by whether they speculated", steps),
        ]  # fmt: skip
        self._observable_counters("llm_worker.spec_decode", lambda: stats().spec, counters)

    def bind_structured_outputs(self, stats: Callable[[], Any]) -> None:
        """Counters of the grammar backend from `stats()` (a structured.stats.StructuredStats,
        or None while the engine has no backend: then no series appear)."""

        counters: list[tuple[str, str, str, Callable[[Any], list[Observation]]]] = [
            ("requests", "{request}", "constrained requests, by constraint kind",
             lambda s: [Observation(n, {"kind": k}) for k, n in sorted(s.num_requests.items())]),
            ("grammar_cache_queries", "{grammar}", "grammars asked for",
             lambda s: [Observation(s.num_cache_queries)]),
            ("grammar_cache_hits", "{grammar}", "grammars found compiled or compiling",
             lambda s: [Observation(s.num_cache_hits)]),
            ("grammar_compiles", "{grammar}", "grammar compilations finished, by outcome",
             lambda s: [Observation(s.num_compiles - s.num_compile_errors, {"outcome": "ok"}),
                        Observation(s.num_compile_errors, {"outcome": "error"})]),
            ("grammar_compile_time", "s", "seconds spent compiling grammars",
             lambda s: [Observation(s.compile_s)]),
            ("mask_fill_time", "s", "seconds spent filling next-token bitmasks",
             lambda s: [Observation(s.mask_fill_s)]),
            ("mask_rows", "{row}", "next-token bitmask rows filled",
             lambda s: [Observation(s.num_mask_rows)]),
        ]  # fmt: skip
        self._observable_counters("llm_worker.structured_outputs", stats, counters)

    def _observable_counters(
        self,
        prefix: str,
        source: Callable[[], Any],
        counters: list[tuple[str, str, str, Callable[[Any], list[Observation]]]],
    ) -> None:
        """One observable counter per (name, unit, description, read): at scrape time each
        reads `source()`, and observes nothing while that is None."""

        def observe(
            read: Callable[[Any], list[Observation]],
        ) -> Callable[[CallbackOptions], Iterator[Observation]]:
            def callback(_: CallbackOptions) -> Iterator[Observation]:
                value = source()
                return iter(read(value) if value is not None else [])

            return callback

        for name, unit, description, read in counters:
            self._meter.create_observable_counter(
                f"{prefix}.{name}", [observe(read)], unit, description
            )

    def bind_consumer_lag(self, lag: Callable[[], int | None]) -> None:
        def callback(_: CallbackOptions) -> Iterator[Observation]:
            value = lag()
            if value is not None:
                yield Observation(value)

        self._meter.create_observable_gauge(
            "messaging.consumer.lag",
            [callback],
            unit="{message}",
            description="jobs waiting in the broker for this group",
        )

    def bind_unreadable_ledger_records(self, count: Callable[[], int]) -> None:
        """Kafka ledger records a take-over skipped as unreadable (each one's job runs again)."""
        self._observable_counters("llm_worker.kafka", count, [(
            "ledger_records_unreadable", "{record}",
            "ledger records skipped at take-over because they could not be read",
            lambda n: [Observation(n)])])

    def bind_unreadable_run_records(self, count: Callable[[], int]) -> None:
        """Redis run records a screening skipped and deleted as unreadable (each one's job runs
        again)."""
        self._observable_counters("llm_worker.redis", count, [(
            "run_records_unreadable", "{record}",
            "run records skipped at screening because they could not be read",
            lambda n: [Observation(n)])])

    def job_consumed(self) -> None:
        self._jobs["consumed"].add(1)

    def job_dead_lettered(self) -> None:
        self._jobs["dead_lettered"].add(1)

    def job_settled(self, result: Result) -> None:
        name = {
            JobStatus.COMPLETED: "completed",
            JobStatus.FAILED: "failed",
            JobStatus.EXPIRED: "expired",
            JobStatus.CANCELLED: "cancelled",
        }.get(result.status)
        if name is None:
            return
        attrs = {"gen_ai.request.model": self.model}
        self._jobs[name].add(
            1,
            attrs
            if name == "completed"
            else {**attrs, "error.type": result.error.code if result.error else name},
        )
        if result.status is not JobStatus.COMPLETED:
            return
        t = result.timings
        for hist, value in (
            (self.ttft, t.ttft_s),
            (self.tpot, t.tpot_s),
            (self.e2e, t.e2e_s),
            (self.queue_time, t.queue_s),
        ):
            if value is not None:
                hist.record(value, attrs)
        self.token_usage.record(result.usage.prompt_tokens, {**attrs, "gen_ai.token.type": "input"})
        self.token_usage.record(
            result.usage.completion_tokens, {**attrs, "gen_ai.token.type": "output"}
        )

    @contextmanager
    def job_span(
        self, operation: str, job_id: str, traceparent: str | None, destination: str
    ) -> Iterator[Span]:
        """A span that continues the producer's trace (W3C traceparent carried in the job)."""
        parent = propagate.extract({"traceparent": traceparent}) if traceparent else None
        kind = SpanKind.CONSUMER if operation in ("receive", "settle") else SpanKind.INTERNAL
        with self.tracer.start_as_current_span(
            f"{operation} {destination}", context=parent, kind=kind
        ) as span:
            span.set_attribute("messaging.system", self.messaging_system)
            span.set_attribute("messaging.operation.type", operation)
            span.set_attribute("messaging.destination.name", destination)
            span.set_attribute("messaging.message.id", job_id)
            span.set_attribute("gen_ai.request.model", self.model)
            yield span

    def start_process_span(self, job: Job, destination: str) -> Span:
        """The span of a job's time in the engine; ended by `end_process_span` when settled."""
        parent = propagate.extract({"traceparent": job.traceparent}) if job.traceparent else None
        span = self.tracer.start_span(
            f"process {destination}", context=parent, kind=SpanKind.CONSUMER
        )
        span.set_attribute("messaging.system", self.messaging_system)
        span.set_attribute("messaging.operation.type", "process")
        span.set_attribute("messaging.destination.name", destination)
        span.set_attribute("messaging.message.id", job.id)
        span.set_attribute("gen_ai.request.model", self.model)
        return span

    def end_process_span(self, span: Span, job: Job, result: Result) -> None:
        self.annotate(span, job, result)
        span.end()

    def annotate(self, span: Span, job: Job, result: Result) -> None:
        span.set_attribute("gen_ai.operation.name", "chat" if job.messages else "text_completion")
        span.set_attribute("gen_ai.request.max_tokens", job.sampling.max_tokens)
        span.set_attribute("gen_ai.request.temperature", job.sampling.temperature)
        span.set_attribute("gen_ai.usage.input_tokens", result.usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.usage.completion_tokens)
        if result.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
        if result.error:
            span.set_attribute("error.type", result.error.code)

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def inject_traceparent(carrier: dict[str, str]) -> dict[str, str]:
    """Producer side: put the current span's traceparent into a job's metadata."""
    propagate.inject(carrier)
    return carrier


def build_telemetry(worker_id: str, model: str, messaging_system: str) -> Telemetry:
    """Prometheus always (the global registry, served by worker.http_endpoints); OTLP metrics and
    traces too when OTEL_EXPORTER_OTLP_ENDPOINT is set (MissingExtra without the otlp extra)."""
    import os

    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    readers: list[MetricReader] = []
    processors: list[SpanProcessor] = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:  # asked for, so silence would lose the traces unnoticed
            raise MissingExtra("OTEL_EXPORTER_OTLP_ENDPOINT", "otlp", exc) from exc
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    readers.append(PrometheusMetricReader())
    return Telemetry(worker_id, model, messaging_system, readers, processors)
