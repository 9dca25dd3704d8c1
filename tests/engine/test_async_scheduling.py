"""Async scheduling: step n+1 is queued before step n's tokens reach the host.

The oracle is the same engine run synchronously: every output (tokens, finish reason, text)
must be the same, whatever stops, aborts, preemptions, prefix hits and arrivals happen while a
step is in flight, and the block pool must end as it started.
"""

from pathlib import Path

import pytest

from llm_worker.engine.llm_engine import PLACEHOLDER, LLMEngine, RequestOutput
from llm_worker.schemas import SamplingParams
from tests.engine.spec_methods import each_spec_method
from tests.oracle import TINY_VOCAB, engine_for, make_tiny_checkpoint

PROMPT_LENS = [5, 17, 33, 3, 48, 21, 9, 64]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("async"), "llama", 4, 2, 64)


def _prompts(n: int = len(PROMPT_LENS)) -> list[list[int]]:
    return [[(7 * i + 13 * j) % (TINY_VOCAB - 3) + 3 for j in range(PROMPT_LENS[i % 8])]
            for i in range(n)]  # fmt: skip


def _engine(checkpoint: Path, async_scheduling: bool, **overrides: object) -> LLMEngine:
    engine = engine_for(checkpoint, async_scheduling=async_scheduling, **overrides)
    assert engine.async_scheduling is async_scheduling
    return engine


def _count_launches(engine: LLMEngine) -> list[int]:
    """Counts the steps queued asynchronously (a wrapper on this engine's runner)."""
    calls = [0]
    launch = engine.runner.launch

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return launch(*args, **kwargs)  # type: ignore[arg-type]

    engine.runner.launch = counted  # type: ignore[method-assign]
    return calls


def _summary(outputs: list[RequestOutput]) -> list[tuple[list[int], str | None]]:
    return [(o.output_token_ids, o.finish_reason) for o in outputs]


def _assert_drained(engine: LLMEngine) -> None:
    bm = engine.block_manager
    assert not engine.requests and engine.updater.in_flight is None
    assert bm.num_free_blocks == bm.num_blocks
    bm.check_invariants([])


def _run_to_end(engine: LLMEngine) -> dict[str, RequestOutput]:
    done: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
    if engine.updater.in_flight is not None:  # only when every request left while a step flew
        engine.step()
    return done


def test_nothing_stays_in_flight_once_every_request_is_done(checkpoint: Path) -> None:
    """Requests that end on a stop token had one more step queued for them; once the last
    one ends, that step is collected at once (its timing would otherwise span the idle gap)."""
    prompts = _prompts(4)
    first = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    plain = _engine(checkpoint, False).generate(prompts, first)
    stops = [out.output_token_ids[3] for out in plain]
    params = [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                             stop_token_ids=[stop]) for stop in stops]  # fmt: skip
    engine = _engine(checkpoint, True)
    outputs = engine.generate(prompts, params)
    assert all(out.finish_reason == "stop" for out in outputs)
    assert engine.updater.in_flight is None


def test_stops_match_sync(checkpoint: Path) -> None:
    prompts = _prompts()
    first = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    plain = _engine(checkpoint, False).generate(prompts, first)
    # A stop token each request meets at a different point, a min_tokens that overrides an
    # early one, and max_tokens of 1 (the step that samples the first token is its last).
    params = []
    for i, out in enumerate(plain):
        stop_at = out.output_token_ids[i % 6 + 1]
        params.append(
            SamplingParams(
                temperature=0.0,
                max_tokens=[20, 1, 7, 20][i % 4],
                stop_token_ids=[stop_at],
                min_tokens=3 if i % 3 == 0 else 0,
                ignore_eos=True,
            )
        )
    expected = _summary(_engine(checkpoint, False).generate(prompts, params))
    engine = _engine(checkpoint, True)
    launches = _count_launches(engine)
    got = engine.generate(prompts, params)
    assert _summary(got) == expected
    assert {reason for _, reason in expected} == {"stop", "length"}
    assert launches[0] > 10
    assert all(PLACEHOLDER not in o.output_token_ids for o in got)
    _assert_drained(engine)


def test_seeded_sampling_matches_sync(checkpoint: Path) -> None:
    prompts = _prompts()
    params = [
        SamplingParams(temperature=0.9, top_k=50, top_p=0.9, min_p=0.01, seed=100 + i,
                       max_tokens=16, ignore_eos=True)
        for i in range(len(prompts))
    ]  # fmt: skip
    expected = _summary(_engine(checkpoint, False).generate(prompts, params))
    engine = _engine(checkpoint, True)
    launches = _count_launches(engine)
    assert _summary(engine.generate(prompts, params)) == expected
    assert launches[0] > 10


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_gpu_blocks_override": 10, "max_model_len": 160,
         "max_num_batched_tokens": 512},  # preemption
        {"max_num_batched_tokens": 24, "enable_prefix_caching": False},  # chunked prefill
        {"max_num_seqs": 3, "enable_prefix_caching": True},  # prefix hits, queueing
    ],
    ids=["preemption", "chunked", "prefix"],
)
def test_scheduling_pressure_matches_sync(checkpoint: Path, overrides: dict[str, object]) -> None:
    shared = [(11 * j) % (TINY_VOCAB - 3) + 3 for j in range(40)]
    prompts = [shared + p[:9] for p in _prompts()] + _prompts()
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    sync = _engine(checkpoint, False, **overrides)
    expected = _summary(sync.generate(prompts, params))
    engine = _engine(checkpoint, True, **overrides)
    launches = _count_launches(engine)
    assert _summary(engine.generate(prompts, params)) == expected
    assert launches[0] > 10
    stats, sync_stats = engine.stats(), sync.stats()
    if "num_gpu_blocks_override" in overrides:
        assert stats.num_preemptions > 0
    if overrides.get("enable_prefix_caching"):
        assert stats.prefix_cache.hits == sync_stats.prefix_cache.hits > 0
    _assert_drained(engine)


def test_arrivals_and_aborts_while_in_flight(checkpoint: Path) -> None:
    prompts = _prompts()
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    expected = _summary(_engine(checkpoint, False).generate(prompts, params))
    engine = _engine(checkpoint, True)
    engine.add_request(
        "victim", prompts[0], SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
    )
    done: dict[str, RequestOutput] = {}
    for i, prompt in enumerate(prompts):  # one arrival per step, each while a step is in flight
        engine.add_request(f"r{i}", prompt, params)
        done.update((o.request_id, o) for o in engine.step())
        if i == 3:
            assert engine.updater.in_flight is not None
            engine.abort("victim")
    done.update(_run_to_end(engine))
    assert _summary([done[f"r{i}"] for i in range(len(prompts))]) == expected
    victim = done["victim"]
    assert victim.finish_reason == "abort"
    assert PLACEHOLDER not in victim.output_token_ids
    assert 0 < len(victim.output_token_ids) < 50
    _assert_drained(engine)


def test_rows_that_need_history_run_synchronously(checkpoint: Path) -> None:
    """Penalties and logprobs read the host's tokens: steps holding them are not deferred,
    and the other sequences keep their in-flight tokens right."""
    prompts = _prompts()
    params = [
        SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, repetition_penalty=1.3)
        if i == 2 else SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=2)
        if i == 5 else SamplingParams(temperature=0.0, max_tokens=10 + i, ignore_eos=True)
        for i in range(len(prompts))
    ]  # fmt: skip
    sync_out = _engine(checkpoint, False).generate(prompts, params)
    engine = _engine(checkpoint, True)
    got = engine.generate(prompts, params)
    assert _summary(got) == _summary(sync_out)
    assert got[5].logprobs is not None and len(got[5].logprobs) == 16
    _assert_drained(engine)


@each_spec_method
def test_speculation_waits_for_the_step_in_flight(
    checkpoint: Path, spec: dict[str, object]
) -> None:
    """With speculation on, steps the controller runs plain go async and those that speculate
    first wait for the tokens in flight; greedy tokens stay those of the plain engine."""
    prompts = [[(5 * i + j % 6) % 400 + 10 for j in range(14 + 5 * i)] for i in range(8)]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    expected = _summary(_engine(checkpoint, False).generate(prompts, params))
    engine = _engine(checkpoint, True, **spec)
    launches = _count_launches(engine)
    assert _summary(engine.generate(prompts, params)) == expected
    stats = engine.stats().spec
    assert stats is not None
    assert stats.num_steps_speculating > 0 and stats.num_steps_plain > 0
    assert stats.num_draft_tokens > 0 and launches[0] > 0
    _assert_drained(engine)


def test_controller_charges_each_step_its_call_to_the_next(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pure decode step costs the wall time from its step() call to the next call, whatever
    mode ran it: a speculating step also pays for the drain before it and for the plain step
    after it refilling the pipeline. The engine's clock is stood still within a call and moved
    between calls by a different amount each time, so each charge must be exactly its call's."""
    engine = _engine(checkpoint, True, speculative_method="ngram")
    assert engine.speculator is not None
    clock = [0.0]
    monkeypatch.setattr("llm_worker.engine.llm_engine.time.monotonic", lambda: clock[0])
    gaps: list[float] = []  # gaps[i]: from call i to call i + 1
    observed: list[tuple[int, bool, float]] = []  # (the call reporting it, mode, seconds)
    observe = engine.speculator.controller.observe

    def record(num: int, speculated: bool, emitted: int, seconds: float) -> None:
        observed.append((len(gaps), speculated, seconds))
        observe(num, speculated, emitted, seconds)

    engine.speculator.controller.observe = record  # type: ignore[method-assign]
    prompts = [[(5 * i + j % 6) % 400 + 10 for j in range(14 + 5 * i)] for i in range(8)]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    while engine.has_unfinished_requests():
        engine.step()
        gaps.append(1.0 + len(gaps) % 7)
        clock[0] += gaps[-1]
    stats = engine.stats().spec
    assert stats is not None
    assert sum(not s for _, s, _ in observed) == stats.num_steps_plain > 0
    assert sum(s for _, s, _ in observed) == stats.num_steps_speculating > 0
    assert [seconds for _, _, seconds in observed] == [gaps[call - 1] for call, _, _ in observed]
