"""Constraints compiled to xgrammar grammars on a thread pool, cached by content hash.

`submit` returns at once with a `PendingGrammar`; the engine polls `done()` each step and keeps
the job out of its batches until then, so a slow schema never holds up the jobs that are
running. xgrammar releases the GIL while it compiles. The cache holds the future itself, so
jobs that ask for a grammar still compiling share that one compilation, and a constraint that
failed to compile fails again at once.
"""

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait

import xgrammar as xgr

from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.errors import (
    InvalidChoiceError,
    InvalidGrammarError,
    InvalidRegexError,
    InvalidSchemaError,
    StructuredOutputError,
    UnsupportedSchemaFeatureError,
    xgrammar_message,
)
from llm_worker.structured.json_patterns import PatternMarkers
from llm_worker.structured.respell import respelled
from llm_worker.structured.schema_check import checked_schema
from llm_worker.structured.sources import ConstraintSource
from llm_worker.structured.stats import StatsRecorder
from llm_worker.structured.vocab import GrammarVocab


class PendingGrammar:
    """A grammar being compiled; `result()` once `done()` (it blocks until then)."""

    def __init__(self, source: ConstraintSource, future: Future[xgr.CompiledGrammar]) -> None:
        self.source = source
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> xgr.CompiledGrammar:
        """The compiled grammar; raises the StructuredOutputError that refused it."""
        return self._future.result()


def wait_for_any(pending: Iterable[PendingGrammar], timeout_s: float) -> None:
    """Return once one of `pending` is done, or after `timeout_s`."""
    wait([p._future for p in pending], timeout_s, FIRST_COMPLETED)


class GrammarCompiler:
    def __init__(
        self,
        vocab: GrammarVocab,
        stats: StatsRecorder,
        *,
        max_cached_grammars: int = 512,
        executor: Executor | None = None,
        num_threads: int = 2,
    ) -> None:
        """`executor`: where compilations run (a pool of `num_threads` by default)."""
        if max_cached_grammars < 1:
            raise ValueError(f"max_cached_grammars must be >= 1, got {max_cached_grammars}")
        self.vocab = vocab
        self._stats = stats
        # Our cache is the one that counts: keyed by content hash, bounded, shared in flight.
        self._compiler = xgr.GrammarCompiler(vocab.info, max_threads=1, cache_enabled=False)
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(num_threads, "grammar-compile")
        self._max_cached = max_cached_grammars
        self._cache: OrderedDict[tuple[str, str], Future[xgr.CompiledGrammar]] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, constraint: StructuredOutputs) -> PendingGrammar:
        source = ConstraintSource.of(constraint)
        key = (self.vocab.fingerprint, source.key)
        with self._lock:
            future = self._cache.get(key)
            hit = future is not None
            if future is None:
                future = self._executor.submit(self._compile, source)
                self._cache[key] = future
                if len(self._cache) > self._max_cached:
                    self._cache.popitem(last=False)  # matchers keep their own grammar alive
            else:
                self._cache.move_to_end(key)
        self._stats.request(source.kind, hit)
        return PendingGrammar(source, future)

    def compile_now(self, constraint: StructuredOutputs) -> xgr.CompiledGrammar:
        """submit() and wait: for tools and tests, never the engine thread."""
        return self.submit(constraint).result()

    def shutdown(self) -> None:
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _compile(self, source: ConstraintSource) -> xgr.CompiledGrammar:
        started = time.perf_counter()
        failed = True
        try:
            grammar = _compile_source(self._compiler, source)
            failed = False
            return grammar
        finally:
            self._stats.compiled(time.perf_counter() - started, failed)


def _compile_source(compiler: xgr.GrammarCompiler, source: ConstraintSource) -> xgr.CompiledGrammar:
    """Every kind goes through xgrammar's Grammar and the EBNF it prints, re-spelled to read
    back as printed and to admit only valid UTF-8 (respell.py), then compiles."""
    if source.kind == "json":
        ebnf = _json_schema_ebnf(source.text)
    else:
        error: type[StructuredOutputError] = {
            "regex": InvalidRegexError,
            "choice": InvalidChoiceError,
        }.get(source.kind, InvalidGrammarError)
        try:
            if source.kind == "regex":
                grammar = xgr.Grammar.from_regex(source.text)
            else:
                grammar = xgr.Grammar.from_ebnf(source.text)
        except (RuntimeError, ValueError) as exc:
            raise error(xgrammar_message(exc)) from None
        ebnf = str(grammar)
    return compiler.compile_grammar(respelled(ebnf))


# xgrammar 0.2.9 spells the characters of a string with minLength/maxLength as this class,
# which lets raw control characters (U+0000-U+001F) into a JSON string; JSON forbids them.
_LOOSE_STRING_CHAR = r"[^\"\\\r\n]"
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\\r\n]"


def _json_schema_ebnf(schema_text: str) -> str:
    """The schema's grammar as EBNF: xgrammar's, with JSON's string characters where its own
    are loose, and patterns compiled as regexes (json_patterns.py)."""
    markers = PatternMarkers()
    schema = checked_schema(json.loads(schema_text), markers)
    try:
        # Compact separators (", " and ": "), no free whitespace: a small model given room
        # for whitespace can spend its whole budget on it.
        grammar = xgr.Grammar.from_json_schema(
            json.dumps(schema), any_whitespace=False, strict_mode=True
        )
    except (RuntimeError, ValueError) as exc:
        message = xgrammar_message(exc)
        if "not supported" in message.lower() or "unsupported" in message.lower():
            raise UnsupportedSchemaFeatureError(message) from None
        raise InvalidSchemaError(message) from None
    return markers.inline(str(grammar).replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR))
