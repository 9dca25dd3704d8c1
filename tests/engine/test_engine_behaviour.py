"""Engine contracts on a dummy tiny Llama: admission, abort, priority, stop rules, logprobs."""

import pytest

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine, RequestRejected
from llm_worker.schemas import SamplingParams


def tiny_engine(**overrides: object) -> LLMEngine:
    settings = EngineSettings(
        model="tiny-llama", load_format="dummy", device="cpu", dtype="float32", **overrides
    )  # type: ignore[arg-type]
    return LLMEngine.from_settings(settings)


def test_refuses_what_can_never_fit_and_keeps_serving() -> None:
    engine = tiny_engine(max_model_len=48, num_gpu_blocks_override=3, block_size=16)
    with pytest.raises(RequestRejected, match="max_model_len") as too_long:
        engine.add_request("a", list(range(10, 70)), SamplingParams(max_tokens=8))
    assert too_long.value.code == "prompt_too_long"
    with pytest.raises(RequestRejected, match="vocabulary"):
        engine.add_request("c", [5, 99999], SamplingParams(max_tokens=2))
    with pytest.raises(RequestRejected, match="no tokens"):
        engine.add_request("d", [], SamplingParams(max_tokens=2))
    [out] = engine.generate([[5, 6, 7]], SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(out.output_token_ids) == 4


def test_abort_frees_blocks_and_reports_abort() -> None:
    engine = tiny_engine()
    free_before = engine.block_manager.num_free_blocks
    engine.add_request("x", list(range(10, 60)), SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    assert engine.block_manager.num_free_blocks < free_before
    engine.abort("x")
    [out] = engine.step()
    assert out.request_id == "x" and out.finish_reason == "abort"
    assert engine.block_manager.num_free_blocks == free_before
    assert not engine.has_unfinished_requests()


def test_higher_priority_is_admitted_first() -> None:
    engine = tiny_engine(max_num_seqs=1)
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    engine.add_request("low", [10, 11, 12], params, priority=0)
    engine.add_request("high", [20, 21, 22], params, priority=5)
    order = []
    while engine.has_unfinished_requests():
        order += [o.request_id for o in engine.step()]
    assert order == ["high", "low"]


def test_a_shortage_preempts_lower_priority_before_a_later_higher_one() -> None:
    """Blocks run out while three low-priority requests and one high-priority request admitted
    after them decode: the victims are low-priority ones, however recently the high-priority
    one was admitted, and all four finish whole."""
    engine = tiny_engine(num_gpu_blocks_override=10, block_size=16, max_num_seqs=4,
                         max_model_len=64)  # fmt: skip
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    for i in range(3):
        engine.add_request(f"low{i}", list(range(10 + i, 26 + i)), params, priority=0)
    engine.step()
    engine.add_request("high", list(range(40, 56)), params, priority=5)
    seqs = {request_id: request.seq for request_id, request in engine.requests.items()}
    lengths = {}
    while engine.has_unfinished_requests():
        lengths |= {o.request_id: len(o.output_token_ids) for o in engine.step() if o.finished}
    assert lengths == dict.fromkeys(seqs, 40)
    assert seqs["high"].num_preemptions == 0
    assert sum(seqs[f"low{i}"].num_preemptions for i in range(3)) > 0


def test_stop_token_ids_min_tokens_and_length() -> None:
    engine = tiny_engine()
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    [free_run] = engine.generate([[7, 8, 9]], greedy)
    first = free_run.output_token_ids[0]
    third = free_run.output_token_ids[2]
    [stopped] = engine.generate([[7, 8, 9]], greedy.model_copy(update={"stop_token_ids": [first]}))
    assert stopped.output_token_ids == [first] and stopped.finish_reason == "stop"
    # min_tokens forbids the stop token until enough tokens exist, so the run diverges.
    held = greedy.model_copy(update={"stop_token_ids": [third], "min_tokens": 5})
    [late] = engine.generate([[7, 8, 9]], held)
    assert len(late.output_token_ids) >= 5
    assert third not in late.output_token_ids[:5]
    assert free_run.finish_reason == "length" and len(free_run.output_token_ids) == 12


def test_logprobs_are_normalised_and_include_the_chosen_token() -> None:
    engine = tiny_engine()
    [out] = engine.generate(
        [[3, 4, 5]], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, logprobs=5)
    )
    assert out.logprobs is not None and len(out.logprobs) == 3
    for token in out.logprobs:
        assert token.top_logprobs is not None and len(token.top_logprobs) == 5
        assert token.logprob == max(token.top_logprobs.values())  # greedy picks the top one
        assert token.token_id in token.top_logprobs


def test_repetition_penalty_changes_greedy_output() -> None:
    engine = tiny_engine()
    prompt = [[11, 12, 13, 11, 12, 13]]
    plain = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    [a] = engine.generate(prompt, plain)
    [b] = engine.generate(
        prompt, plain.model_copy(update={"presence_penalty": 2.0, "repetition_penalty": 5.0})
    )
    assert len(set(b.output_token_ids)) >= len(set(a.output_token_ids))
    assert a.output_token_ids != b.output_token_ids


def test_unchunked_prefill_refuses_what_one_step_cannot_hold() -> None:
    engine = tiny_engine(enable_chunked_prefill=False, max_num_batched_tokens=32)
    with pytest.raises(RequestRejected, match="max-num-batched-tokens"):
        engine.add_request("long", list(range(10, 40)), SamplingParams(max_tokens=8))
    [out] = engine.generate([list(range(10, 30))], SamplingParams(max_tokens=8, ignore_eos=True))
    assert len(out.output_token_ids) == 8
