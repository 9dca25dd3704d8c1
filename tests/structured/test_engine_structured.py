"""Structured outputs inside the engine, on a tiny random model over SmolLM2's tokenizer: the
output obeys its constraint, unconstrained rows of the same steps are untouched, and the mask
composes with async scheduling, preemption, chunked prefill, prefix hits and sampling params.
Oracles: the constraint itself (re, json, the choice list), the same engine run without the
constrained jobs or with other settings, and xgrammar's own matcher for what a row allows."""

import contextlib
import json
import math
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_worker.config import EngineSettings
from llm_worker.engine.builder import EngineConfigError
from llm_worker.engine.llm_engine import LLMEngine, RequestOutput
from llm_worker.engine.scheduler import RequestRejected
from llm_worker.schemas import SamplingParams
from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.stats import StatsRecorder
from tests.oracle import TINY_VOCAB, engine_for, make_tiny_checkpoint
from tests.structured.engine_fixtures import chat_ids, make_tiny_smollm2_checkpoint, tiny_engine

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "age", "tags"],
}
REGEX = r"[a-z]{1,6}-[0-9]{2,4}"
CHOICES = ["red", "green", "blue and yellow"]
CONSTRAINTS = [
    StructuredOutputs.model_validate({"json": PERSON}),
    StructuredOutputs(regex=REGEX),
    StructuredOutputs(choice=CHOICES),
    StructuredOutputs(grammar='root ::= "(" [0-9]+ ("+" [0-9]+)* ")"'),
]
MESSAGES = ["a person", "a code", "a colour", "a sum", "hello", "tell me more", "x", "why"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return make_tiny_smollm2_checkpoint(tmp_path_factory.mktemp("tiny-smol"), smollm2_dir)


@pytest.fixture(scope="module")
def engine(checkpoint: Path) -> LLMEngine:
    return tiny_engine(checkpoint)


def assert_obeys(constraint: StructuredOutputs, out: RequestOutput) -> None:
    """A constrained output that ran to its end is in the constraint's language; one cut by
    max_tokens is `length`."""
    assert out.finish_reason in ("stop", "length"), (out.finish_reason, out.error)
    if out.finish_reason != "stop":
        return
    text = out.text or ""
    if constraint.json_schema is not None:
        value = json.loads(text)
        assert set(value) == {"name", "age", "tags"} and 0 <= value["age"] <= 99, text
    elif constraint.regex is not None:
        assert re.fullmatch(constraint.regex, text), text
    elif constraint.choice is not None:
        assert text in constraint.choice
    else:
        assert re.fullmatch(r"\(\d+(\+\d+)*\)", text), text


def _mixed_batch(
    engine: LLMEngine, constrained: bool, **sampling: object
) -> tuple[list[list[int]], list[SamplingParams]]:
    prompts = [chat_ids(engine, m) for m in MESSAGES]
    params = []
    for i in range(len(prompts)):
        if i % 2 == 0 and constrained:
            constraint = CONSTRAINTS[(i // 2) % len(CONSTRAINTS)]
            params.append(SamplingParams(max_tokens=40, structured_outputs=constraint, **sampling))  # type: ignore[arg-type]
        else:
            params.append(SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    return prompts, params


def test_unconstrained_rows_are_the_same_with_constrained_rows_beside_them(
    engine: LLMEngine,
) -> None:
    prompts, params = _mixed_batch(engine, constrained=True, temperature=0.0)
    mixed = engine.generate(prompts, params)
    free = [i for i, p in enumerate(params) if p.structured_outputs is None]
    alone = engine.generate([prompts[i] for i in free], [params[i] for i in free])
    assert [mixed[i].output_token_ids for i in free] == [o.output_token_ids for o in alone]
    for out, p in zip(mixed, params, strict=True):
        if p.structured_outputs is not None:
            assert_obeys(p.structured_outputs, out)
    assert sum(o.finish_reason == "stop" for o, p in zip(mixed, params, strict=True)
               if p.structured_outputs is not None) >= 2  # fmt: skip
    stats = engine.structured_stats()
    assert stats is not None and stats.num_mask_rows > 0
    assert sum(stats.num_requests.values()) >= 4


@pytest.mark.parametrize(
    "overrides",
    [
        {"async_scheduling": True},
        # Preemption by recompute (a cache of a few blocks), chunked prefill (a small token
        # budget) and prefix hits (the same prompts twice over).
        {"num_gpu_blocks_override": 12, "max_model_len": 96, "max_num_batched_tokens": 24,
         "block_size": 8},
    ],
    ids=["async", "preempt-chunk-prefix"],
)
def test_the_mask_composes_with_the_engine(
    checkpoint: Path, engine: LLMEngine, overrides: dict[str, object]
) -> None:
    prompts, params = _mixed_batch(engine, constrained=True, temperature=0.0)
    prompts, params = prompts + prompts, params + params
    expected = engine.generate(prompts, params)
    other = tiny_engine(checkpoint, **overrides)
    outputs = other.generate(prompts, params)
    assert [(o.output_token_ids, o.finish_reason) for o in outputs] == [
        (o.output_token_ids, o.finish_reason) for o in expected
    ]
    if "num_gpu_blocks_override" in overrides:
        stats = other.stats()
        assert stats.num_preemptions > 0 and stats.prefix_cache.hits > 0


def test_every_sampling_param_composes_with_the_mask(engine: LLMEngine) -> None:
    prompts, params = _mixed_batch(
        engine, constrained=True, temperature=1.0, top_k=50, top_p=0.9, min_p=0.01,
        repetition_penalty=1.2, frequency_penalty=0.5, presence_penalty=0.3, seed=7,
    )  # fmt: skip
    first = engine.generate(prompts, params)
    again = engine.generate(prompts, params)
    for out, repeat, p in zip(first, again, params, strict=True):
        if p.structured_outputs is not None:
            assert_obeys(p.structured_outputs, out)
            assert out.output_token_ids == repeat.output_token_ids  # seeded


def test_logprobs_are_of_the_masked_distribution(engine: LLMEngine) -> None:
    constraint = StructuredOutputs(choice=CHOICES)
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=8, logprobs=5,
                            structured_outputs=constraint)  # fmt: skip
    [out] = engine.generate([chat_ids(engine, "colour?")], params)
    assert out.logprobs is not None and out.text in CHOICES
    assert engine.structured is not None
    grammar = engine.structured.compiler.compile_now(constraint)
    matcher = SequenceMatcher(grammar)
    bitmask = torch.zeros((1, engine.structured.vocab.num_bitmask_words), dtype=torch.int32)
    for token in out.logprobs:
        matcher.fill_row(bitmask, 0)
        finite = {t: lp for t, lp in (token.top_logprobs or {}).items() if math.isfinite(lp)}
        assert token.token_id in finite and token.logprob is not None
        assert math.isfinite(token.logprob)
        for token_id in finite:
            assert bitmask[0, token_id // 32] >> (token_id % 32) & 1, token_id
        matcher.accept([token.token_id])
    assert matcher.is_terminated


def test_min_tokens_and_ignore_eos_never_force_a_token_the_grammar_forbids(
    engine: LLMEngine,
) -> None:
    """Stops are held back only while the grammar allows something else: a choice ends at
    its end, short of min_tokens or with ignore_eos; a regex with room to grow grows."""
    prompt = chat_ids(engine, "colour?")
    choice = StructuredOutputs(choice=CHOICES)
    grow = StructuredOutputs(regex="[a-z]{1,30}")
    outs = engine.generate([prompt] * 3, [
        SamplingParams(temperature=0.0, max_tokens=20, min_tokens=15, structured_outputs=choice),
        SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, structured_outputs=choice),
        SamplingParams(temperature=0.0, max_tokens=40, min_tokens=12, structured_outputs=grow),
    ])  # fmt: skip
    assert [o.finish_reason for o in outs[:2]] == ["stop", "stop"]
    assert outs[0].text in CHOICES and outs[1].text in CHOICES
    assert re.fullmatch("[a-z]{1,30}", outs[2].text or "")
    assert len(outs[2].output_token_ids) >= 12 or outs[2].finish_reason == "stop"


def test_max_tokens_cuts_a_constrained_output_short_as_length(engine: LLMEngine) -> None:
    constraint = StructuredOutputs.model_validate({"json": PERSON})
    params = SamplingParams(temperature=0.0, max_tokens=3, structured_outputs=constraint)
    [out] = engine.generate([chat_ids(engine, "a person")], params)
    assert out.finish_reason == "length" and len(out.output_token_ids) == 3
    assert (out.text or "").startswith("{")


@pytest.mark.parametrize(
    ("constraint", "problem"),
    [
        ({"json": {"type": "nonsense"}}, "invalid JSON schema"),
        ({"json": {"not": {"type": "string"}}}, "unsupported JSON schema feature"),
        ({"regex": "(ab"}, "invalid regex"),
        ({"grammar": "root ::= ("}, "invalid grammar"),
    ],
)
def test_a_constraint_that_cannot_compile_fails_its_request_alone(
    engine: LLMEngine, constraint: dict[str, object], problem: str
) -> None:
    prompt = chat_ids(engine, "hi")
    good = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    bound = StructuredOutputs.model_validate(constraint)
    bad = SamplingParams(temperature=0.0, max_tokens=6, structured_outputs=bound)
    ok, failed, also_ok = engine.generate([prompt] * 3, [good, bad, good])
    assert failed.finish_reason == "invalid_request" and failed.output_token_ids == []
    assert failed.error is not None and failed.error.startswith(problem), failed.error
    assert ok.finish_reason == also_ok.finish_reason == "length"
    assert len(ok.output_token_ids) == 6


def test_a_model_without_a_tokenizer_refuses_constraints_and_serves_the_rest(
    tmp_path: Path,
) -> None:
    engine = engine_for(make_tiny_checkpoint(tmp_path, "llama", 4, 4, 64), max_num_seqs=4,
                        kv_cache_memory_gb=0.01)  # fmt: skip
    assert engine.structured is None and engine.structured_stats() is None
    constrained = SamplingParams(structured_outputs=StructuredOutputs(regex="a+"))
    with pytest.raises(RequestRejected) as refused:
        engine.add_request("c", [5, 6, 7], constrained)
    assert refused.value.code == "invalid_request" and "tokenizer" in refused.value.message
    [out] = engine.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=4))
    assert len(out.output_token_ids) == 4 and all(t < TINY_VOCAB for t in out.output_token_ids)


@contextlib.contextmanager
def held_compiles(engine: LLMEngine) -> Iterator[threading.Event]:
    """The engine's grammars compile on a pool kept busy until the event is set."""
    backend = engine.structured
    assert backend is not None
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    pool.submit(gate.wait)
    own = backend.compiler
    backend.compiler = GrammarCompiler(backend.vocab, StatsRecorder(), executor=pool)
    try:
        yield gate
    finally:
        gate.set()
        backend.compiler = own
        pool.shutdown()


def test_a_request_waits_for_its_grammar_while_the_others_run(engine: LLMEngine) -> None:
    """The compile runs on a pool held busy here: the engine keeps stepping the free request
    to its end, never blocked, and runs the constrained one once its grammar is ready."""
    with held_compiles(engine) as gate:
        prompt = chat_ids(engine, "colour?")
        constraint = StructuredOutputs(choice=["cyan", "magenta"])
        engine.add_request(
            "bound",
            prompt,
            SamplingParams(temperature=0.0, max_tokens=8, structured_outputs=constraint),
        )
        engine.add_request("free", prompt, SamplingParams(temperature=0.0, max_tokens=5))
        finished: dict[str, RequestOutput] = {}
        while "free" not in finished:
            finished.update((o.request_id, o) for o in engine.step())
        assert "bound" not in finished and engine.updater.compiling
        gate.set()
        while "bound" not in finished:
            finished.update((o.request_id, o) for o in engine.step())
        assert finished["bound"].text in ("cyan", "magenta")


def test_an_abort_while_compiling_ends_the_request(engine: LLMEngine) -> None:
    with held_compiles(engine):
        constraint = StructuredOutputs(regex="[xyz]{3}")
        engine.add_request("gone", [5, 6], SamplingParams(structured_outputs=constraint))
        engine.abort("gone")
        [out] = engine.step()
        assert out.finish_reason == "abort" and not engine.updater.compiling
        assert not engine.has_unfinished_requests()


def test_a_tokenizer_for_a_dummy_shape_must_fit_its_vocabulary(smollm2_dir: Path) -> None:
    """--tokenizer gives a named shape a tokenizer (the 8B benchmark's); tiny-llama's 512 ids
    cannot hold SmolLM2's 49,152 tokens."""
    settings = EngineSettings(model="tiny-llama", load_format="dummy", device="cpu",
                              tokenizer=smollm2_dir, kv_cache_memory_gb=0.01)  # fmt: skip
    with pytest.raises(EngineConfigError, match="more than the model's vocabulary"):
        LLMEngine.from_settings(settings)


class FillFault(SequenceMatcher):
    """A matcher whose grammar backend raises when asked for a mask (an xgrammar fault)."""

    @property
    def xgr_matcher(self) -> Any:
        raise RuntimeError("injected grammar fault")


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_mask_fill_fault_fails_only_its_own_request(
    checkpoint: Path, async_scheduling: bool
) -> None:
    engine = tiny_engine(checkpoint, async_scheduling=async_scheduling)
    broken = _run_with_one_matcher_swapped(engine, CONSTRAINTS[1], FillFault)
    assert broken.error is not None and "injected grammar fault" in broken.error


def _run_with_one_matcher_swapped(
    engine: LLMEngine, constraint: StructuredOutputs, swap: Callable[[Any], SequenceMatcher]
) -> RequestOutput:
    """Run a request whose matcher is swapped for swap(its grammar) once compiled, beside a
    sound one under the same constraint and a free one: the swapped request fails with
    internal_error and is returned; the other two finish as they should."""
    prompt = chat_ids(engine, "a code")
    bound = SamplingParams(temperature=0.0, max_tokens=30, structured_outputs=constraint)
    free = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    for request_id, params in (("broken", bound), ("bound", bound), ("free", free)):
        engine.add_request(request_id, prompt, params)
    finished: dict[str, RequestOutput] = {}
    while engine.requests["broken"].matcher is None:  # its grammar compiles off the thread
        finished.update((o.request_id, o) for o in engine.step())
    assert engine.structured is not None
    engine.requests["broken"].matcher = swap(engine.structured.compiler.compile_now(constraint))
    while engine.has_unfinished_requests():
        finished.update((o.request_id, o) for o in engine.step())
    assert_obeys(constraint, finished["bound"])
    assert finished["free"].finish_reason == "length"
    assert len(finished["free"].output_token_ids) == 10
    assert finished["broken"].finish_reason == "internal_error"
    return finished["broken"]


def test_an_async_step_with_grammar_rows_queues_its_forward_before_it_waits(
    checkpoint: Path,
) -> None:
    """The overlap kept for constrained rows: each decode step's forward is queued before the
    host waits for the step in flight (whose tokens the matchers need), so the device has the
    forward to run while the host advances the matchers and fills the mask."""
    events = _log_async_steps(tiny_engine(checkpoint, async_scheduling=True))
    waits = [i for i, event in enumerate(events) if event == "wait"]
    assert len(waits) >= 10
    assert all(events[i - 1] == "forward" for i in waits), " ".join(events)


def test_an_async_step_fills_its_mask_beside_the_rest_of_the_drain(checkpoint: Path) -> None:
    """Once the drained tokens have advanced the matchers, the mask starts filling before any
    of those tokens is detokenized: the fill runs beside the drain's other work."""
    events = _log_async_steps(tiny_engine(checkpoint, async_scheduling=True))
    waits = [i for i, event in enumerate(events) if event == "wait"]
    assert len(waits) >= 10
    assert all(events[i + 1] == "fill" for i in waits), " ".join(events)


def _log_async_steps(engine: LLMEngine) -> list[str]:
    """Run a mixed batch, logging each forward queued, each wait for a step in flight, each
    mask fill started and each token detokenized; check the constrained outputs."""
    events: list[str] = []
    forward, drain = engine.runner.logits, engine.updater.drain
    step_mask = engine.grammars.step_mask

    def logged_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        events.append("forward")
        return forward(*args, **kwargs)

    def logged_drain(then: Any = None) -> None:
        waits = engine.updater.in_flight is not None and engine.requests  # not the last one
        events.append("wait" if waits else "idle")
        drain(then)

    def logged_step_mask(*args: Any) -> Any:
        events.append("fill")
        return step_mask(*args)

    def logged_push(push: Any) -> Any:
        def pushed(token_id: int) -> bool:
            events.append("detokenize")
            return bool(push(token_id))

        return pushed

    engine.runner.logits = logged_forward  # type: ignore[method-assign]
    engine.updater.drain = logged_drain  # type: ignore[method-assign]
    engine.grammars.step_mask = logged_step_mask  # type: ignore[method-assign]
    prompts, params = _mixed_batch(engine, constrained=True, temperature=0.0)
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(f"r{i}", prompt, p)
        detokenizer = engine.requests[f"r{i}"].detokenizer
        assert detokenizer is not None
        detokenizer.push = logged_push(detokenizer.push)  # type: ignore[method-assign]
    outputs: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        outputs.update((o.request_id, o) for o in engine.step())
    for i, p in enumerate(params):
        if p.structured_outputs is not None:
            assert_obeys(p.structured_outputs, outputs[f"r{i}"])
    return events


class Ended(SequenceMatcher):
    """A matcher whose grammar has already ended (it took its stop token): it has no mask to
    give, and refuses every token."""

    def __init__(self, grammar: Any, output_token_ids: list[int]) -> None:
        super().__init__(grammar)
        self.accept(output_token_ids)
        assert self.is_terminated


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_token_the_grammar_refuses_fails_only_its_own_request(
    checkpoint: Path, async_scheduling: bool
) -> None:
    """The mask lets through only what the grammar allows, so a refused token is a fault of
    that request (here a matcher swapped for one that has ended): it fails with
    internal_error, naming the token, and the other rows carry on."""
    engine = tiny_engine(checkpoint, async_scheduling=async_scheduling)
    ending = [*engine.tokenizer.encode("red", add_special_tokens=False),
              engine.updater.eos_token_ids[0]]  # fmt: skip
    broken = _run_with_one_matcher_swapped(engine, CONSTRAINTS[2], lambda g: Ended(g, ending))
    assert broken.error is not None and "is not allowed after" in broken.error
