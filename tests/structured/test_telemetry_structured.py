"""The grammar backend's counters reach Prometheus, read from its stats at scrape time."""

import contextlib
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.backend import StructuredOutputBackend, StructuredOutputConfig
from llm_worker.structured.errors import StructuredOutputError
from llm_worker.structured.stats import StructuredStats
from llm_worker.structured.vocab import GrammarVocab
from llm_worker.telemetry import Telemetry


def _value(text: str, name: str, label: str = "") -> float:
    lines = [line for line in text.splitlines() if line.startswith(name) and label in line]
    assert len(lines) == 1, (name, label, lines)
    return float(lines[0].rsplit(" ", 1)[1])


def _scrape(stats: Any) -> str:
    registry = CollectorRegistry()
    reader = PrometheusMetricReader()
    registry.register(reader._collector)
    telemetry = Telemetry("w1", "smollm2", "redis", metric_readers=[reader])
    telemetry.bind_structured_outputs(stats)
    try:
        return generate_latest(registry).decode()
    finally:
        telemetry.shutdown()


def test_counters_follow_the_backend(vocab: GrammarVocab) -> None:
    backend = StructuredOutputBackend(vocab, StructuredOutputConfig(max_rows=4))
    try:
        for constraint in (
            StructuredOutputs(regex="[a-c]+"),
            StructuredOutputs(regex="[a-c]+"),
            StructuredOutputs(choice=["x", "y"]),
            StructuredOutputs(regex="(bad"),
        ):
            with contextlib.suppress(StructuredOutputError):
                backend.submit(constraint).result()
        matcher = backend.matcher(backend.submit(StructuredOutputs(regex="[a-c]+")))
        backend.filler.fill([matcher, matcher])
    finally:
        backend.shutdown()
    stats = backend.stats()
    text = _scrape(backend.stats)
    prefix = "llm_worker_structured_outputs_"
    assert _value(text, f"{prefix}requests_total", 'kind="regex"') == 4
    assert _value(text, f"{prefix}requests_total", 'kind="choice"') == 1
    assert _value(text, f"{prefix}grammar_cache_queries_total") == 5
    assert _value(text, f"{prefix}grammar_cache_hits_total") == 2
    assert _value(text, f"{prefix}grammar_compiles_total", 'outcome="ok"') == 2
    assert _value(text, f"{prefix}grammar_compiles_total", 'outcome="error"') == 1
    assert _value(text, f"{prefix}grammar_compile_time_seconds_total") == stats.compile_s > 0
    assert _value(text, f"{prefix}mask_rows_total") == 2
    assert _value(text, f"{prefix}mask_fill_time_seconds_total") == stats.mask_fill_s > 0


def test_no_backend_no_series() -> None:
    assert "structured_outputs" not in _scrape(lambda: None)
    assert "structured_outputs_requests" in _scrape(
        lambda: StructuredStats(num_requests={"json": 1})
    )
