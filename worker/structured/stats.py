"""Counters of the grammar backend, written from the engine and compile threads, read by
telemetry at scrape time."""

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StructuredStats:
    """Cumulative since start; seconds are wall time."""

    num_requests: dict[str, int] = field(default_factory=dict)  # constrained requests by kind
    num_cache_queries: int = 0  # grammars asked for
    num_cache_hits: int = 0  # ... that were compiled or compiling already
    num_compiles: int = 0  # compilations finished, failed ones included
    num_compile_errors: int = 0
    compile_s: float = 0.0
    num_mask_fills: int = 0  # batch fills (one per step with constrained rows)
    num_mask_rows: int = 0  # bitmask rows filled
    mask_fill_s: float = 0.0


class StatsRecorder:
    """The one writer of the backend's counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._queries = self._hits = self._compiles = self._errors = 0
        self._fills = self._rows = 0
        self._compile_s = self._fill_s = 0.0

    def request(self, kind: str, cache_hit: bool) -> None:
        with self._lock:
            self._requests[kind] += 1
            self._queries += 1
            self._hits += int(cache_hit)

    def compiled(self, seconds: float, failed: bool) -> None:
        with self._lock:
            self._compiles += 1
            self._errors += int(failed)
            self._compile_s += seconds

    def filled(self, num_rows: int, seconds: float) -> None:
        with self._lock:
            self._fills += 1
            self._rows += num_rows
            self._fill_s += seconds

    def snapshot(self) -> StructuredStats:
        with self._lock:
            return StructuredStats(
                num_requests=dict(self._requests),
                num_cache_queries=self._queries,
                num_cache_hits=self._hits,
                num_compiles=self._compiles,
                num_compile_errors=self._errors,
                compile_s=self._compile_s,
                num_mask_fills=self._fills,
                num_mask_rows=self._rows,
                mask_fill_s=self._fill_s,
            )
