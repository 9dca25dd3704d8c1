"""A fault in one request's own work fails that request alone: it ends with internal_error and
the message, every other request in its batches gets exactly the tokens and text it gets
without it, and the blocks all come back. A device fault still ends the engine.

Faults come from schema-valid requests that broke the engine before (issue 25: a seed and a
top_k past int64, a stop token id past the vocabulary, a cache salt that is not encodable) and,
for the stages such requests do not reach, from an exception injected into one request's
verification, drafting, detokenizing or block hashing.
"""

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from llm_worker.engine import speculative
from llm_worker.engine.block_manager import BlockManager
from llm_worker.engine.detokenizer import IncrementalDetokenizer
from llm_worker.engine.draft import DraftProposer
from llm_worker.engine.faults import is_device_fault
from llm_worker.engine.llm_engine import LLMEngine, RequestOutput, RequestRejected
from llm_worker.engine_thread import Crashed, EngineRequest, EngineThread, Failed, Finished
from llm_worker.schemas import SamplingParams
from tests.oracle import engine_for, make_tiny_checkpoint

# The request a fault is injected into is greedy (its seed is never drawn from) with a stop
# string no text contains: what the injected code sees of it.
MARK_SEED = 4242
MARK_STOP = "\x00marked\x00"
MODES = {
    "sync": {"async_scheduling": False},
    "async": {"async_scheduling": True},
    "ngram": {"speculative_method": "ngram", "prompt_lookup_min": 1},
    "draft": {"speculative_method": "draft", "speculative_draft_layers": 1},
}
SPEC = {"speculative_adaptive": False, "num_speculative_tokens": 3}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, so requests have text and stop strings."""
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("faults"), "llama", 4, 2, 64)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(folder)
    return folder


def _engine(checkpoint: Path, mode: str) -> LLMEngine:
    extra = SPEC if "speculative_method" in MODES[mode] else {}
    return engine_for(checkpoint, **MODES[mode], **extra, num_gpu_blocks_override=64)


def _prompts() -> list[list[int]]:
    """Repetitive, so prompt lookup finds drafts; the last one shares a prefix with the first."""
    base = [[(7 * i + j % (3 + i)) % 900 + 40 for j in range(12 + 5 * i)] for i in range(4)]
    return [*base, [*base[0][:16], 77, 78]]


def _past_the_schema(**fields: object) -> SamplingParams:
    """Values the wire schema now refuses, as a caller of the engine itself can still pass them:
    the engine's own request-level defence is what these tests are about."""
    return SamplingParams.model_construct(**fields)


def _params() -> list[SamplingParams]:
    return [SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True) if i % 2 else
            SamplingParams(temperature=0.9, top_k=40, seed=i, max_tokens=10, ignore_eos=True)
            for i in range(len(_prompts()))]  # fmt: skip


def _summary(out: RequestOutput) -> tuple[list[int], str | None, str | None]:
    return out.output_token_ids, out.text, out.finish_reason


Faulty = dict[int, tuple[str, list[int], SamplingParams, str | None]]


def _run(engine: LLMEngine, faulty: Faulty) -> dict[str, RequestOutput]:
    """The shared prompts as r0.., one arriving per step, and after r_i the faulty request
    faulty[i] (id, prompt, params, cache salt); every output by id."""
    done: dict[str, RequestOutput] = {}
    for i, (prompt, params) in enumerate(zip(_prompts(), _params(), strict=True)):
        engine.add_request(f"r{i}", prompt, params)
        if i in faulty:
            request_id, bad_prompt, bad_params, salt = faulty[i]
            engine.add_request(request_id, bad_prompt, bad_params, cache_salt=salt)
        done.update((out.request_id, out) for out in engine.step())
    while engine.has_unfinished_requests():
        done.update((out.request_id, out) for out in engine.step())
    bm = engine.block_manager
    bm.check_invariants([])
    assert bm.num_free_blocks == bm.num_blocks
    return done


_expected: dict[str, dict[str, tuple]] = {}


def _expected_for(checkpoint: Path, mode: str) -> dict[str, tuple]:
    if mode not in _expected:
        done = _run(_engine(checkpoint, mode), {})
        _expected[mode] = {request_id: _summary(out) for request_id, out in done.items()}
    return _expected[mode]


def _assert_only_faulty_failed(
    checkpoint: Path, mode: str, done: dict[str, RequestOutput], faulty: set[str], why: str
) -> None:
    for request_id in faulty:
        out = done[request_id]
        assert out.finish_reason == "internal_error" and out.error is not None, out
        assert why in out.error, out.error
    others = {request_id: _summary(out) for request_id, out in done.items()
              if request_id not in faulty}  # fmt: skip
    assert others == _expected_for(checkpoint, mode)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rows_that_break_the_sampler_fail_alone(checkpoint: Path, mode: str) -> None:
    """top_k past int64 with temperature > 0 raised in the sampler for the whole batch."""
    huge_top_k = _past_the_schema(temperature=0.7, top_k=2**63, max_tokens=10)
    faulty = {1: ("topk-1", [50, 51, 52], huge_top_k, None),
              3: ("topk-3", [60] * 20, huge_top_k, None)}  # fmt: skip
    done = _run(_engine(checkpoint, mode), faulty)
    _assert_only_faulty_failed(checkpoint, mode, done, {"topk-1", "topk-3"}, "Overflow")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_unencodable_cache_salt_fails_at_admission_alone(checkpoint: Path, mode: str) -> None:
    """Hashing a block with a lone surrogate in the salt raised in the middle of scheduling."""
    greedy = SamplingParams(temperature=0.0, max_tokens=4)
    faulty = {2: ("salt-2", list(range(100, 120)), greedy, "\ud800")}
    done = _run(_engine(checkpoint, mode), faulty)
    _assert_only_faulty_failed(checkpoint, mode, done, {"salt-2"}, "UnicodeEncodeError")


def test_what_can_never_run_is_refused_and_the_engine_serves_on(checkpoint: Path) -> None:
    """A seed past 64 bits cannot seed a generator (internal_error at admission); a stop token
    id past the vocabulary would index the logits out of bounds (invalid_request)."""
    engine = _engine(checkpoint, "sync")
    with pytest.raises(RequestRejected, match="Overflow") as seed:
        engine.add_request("seed", [5, 6], _past_the_schema(temperature=0.7, seed=2**64))
    assert seed.value.code == "internal_error"
    with pytest.raises(RequestRejected, match="vocabulary") as stop:
        engine.add_request("stop", [5, 6], SamplingParams(stop_token_ids=[10**6], min_tokens=2))
    assert stop.value.code == "invalid_request"
    assert not engine.requests
    done = _run(engine, {})
    assert {request_id: _summary(out) for request_id, out in done.items()} == _expected_for(
        checkpoint, "sync"
    )


def _raise_for_marked(real: Callable, marked: Callable[..., bool]) -> Callable:
    def wrapper(*args: object) -> object:
        if marked(*args):
            raise ValueError("injected fault")
        return real(*args)

    return wrapper


def _marked_rows(rows: list) -> bool:
    return any(row.params.seed == MARK_SEED for row in rows)


INJECTIONS: dict[str, tuple[object, str, Callable[..., bool]]] = {
    # where, what, and when it raises (for the marked request only)
    "verify": (speculative, "verify",
               lambda logits, items, gen: any(_marked_rows(i.rows) for i in items)),
    "draft": (DraftProposer, "propose", lambda self, items, rows, gen: _marked_rows(rows)),
    "detokenize": (IncrementalDetokenizer, "push",
                   lambda self, token_id: MARK_STOP in self.stop and len(self.ids) >= 2),
    "hash": (BlockManager, "cache_computed_blocks",
             lambda self, seq: seq.params.seed == MARK_SEED and seq.num_output_tokens >= 3),
}  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "mode"),
    [("verify", "ngram"), ("verify", "draft"), ("draft", "draft"), ("detokenize", "sync"),
     ("detokenize", "async"), ("detokenize", "ngram"), ("hash", "sync"), ("hash", "async")],
)  # fmt: skip
def test_a_fault_injected_into_one_request_fails_it_alone(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, stage: str, mode: str
) -> None:
    owner, name, marked = INJECTIONS[stage]
    monkeypatch.setattr(owner, name, _raise_for_marked(getattr(owner, name), marked))
    params = SamplingParams(temperature=0.0, seed=MARK_SEED, stop=[MARK_STOP], max_tokens=10,
                            ignore_eos=True)  # fmt: skip
    done = _run(_engine(checkpoint, mode), {2: ("marked", [33, 34, 35] * 6, params, None)})
    if stage != "draft":  # the others fail on its first token; drafting precedes any
        assert done["marked"].output_token_ids, "the fault came before the stage it is for"
    _assert_only_faulty_failed(checkpoint, mode, done, {"marked"}, "injected fault")


def test_a_device_fault_still_ends_the_step(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory is not one request's fault: it leaves the engine, for the process to end."""
    assert is_device_fault(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_device_fault(torch.AcceleratorError("CUDA error: an illegal memory access"))
    assert not is_device_fault(ValueError("Overflow when unpacking long long"))

    def out_of_memory(*args: object) -> object:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(IncrementalDetokenizer, "push", out_of_memory)
    engine = _engine(checkpoint, "sync")
    engine.add_request("a", [5, 6, 7], SamplingParams(max_tokens=4))
    with pytest.raises(torch.OutOfMemoryError):
        engine.step()


def test_the_engine_thread_reports_failed_requests_and_keeps_serving(checkpoint: Path) -> None:
    """Through the thread the service drives: a Failed event per bad request, Finished for
    the rest, no Crashed, and the thread serves a request sent after them."""
    engine = _engine(checkpoint, "async")
    good = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    requests = [
        ("ok-1", [40, 41, 42], good, None),
        ("topk", [40, 41, 43], _past_the_schema(temperature=0.7, top_k=2**63), None),
        ("seed", [40, 41, 44], _past_the_schema(temperature=0.7, seed=2**64), None),
        ("stop", [40, 41, 45], SamplingParams(stop_token_ids=[10**6], min_tokens=2), None),
        ("salt", list(range(200, 220)), good, "\ud800"),
        ("ok-2", [50, 51, 52, 53], good, None),
    ]

    async def serve() -> dict[str, object]:
        events: asyncio.Queue = asyncio.Queue()
        thread = EngineThread(engine, events)
        thread.start()
        for request_id, prompt, params, salt in requests:
            thread.submit(EngineRequest(request_id, prompt, params, 0, salt, 0.0))
        got = {}
        while len(got) < len(requests):
            event = await asyncio.wait_for(events.get(), 120)
            assert not isinstance(event, Crashed), event
            if isinstance(event, Finished):
                got[event.output.request_id] = event
            else:
                got[event.request_id] = event
        thread.submit(EngineRequest("after", [60, 61], good, 0, None, 0.0))
        got["after"] = await asyncio.wait_for(events.get(), 120)
        await thread.stop()
        return got

    got = asyncio.run(serve())
    codes = {request_id: event.code for request_id, event in got.items()
             if isinstance(event, Failed)}  # fmt: skip
    assert codes == {"topk": "internal_error", "seed": "internal_error",
                     "stop": "invalid_request", "salt": "internal_error"}  # fmt: skip
    for request_id in ("ok-1", "ok-2", "after"):
        event = got[request_id]
        assert isinstance(event, Finished) and len(event.output.output_token_ids) == 6


@pytest.mark.gpu
@pytest.mark.parametrize("speculative_method", [None, "ngram"])
def test_on_cuda_a_row_that_breaks_the_sampler_fails_alone(speculative_method: str | None) -> None:
    """The CUDA path: graphs replayed, steps launched async (their tokens still on the device
    when the fault is found), verification steps with n-gram drafts."""
    from llm_worker.config import EngineSettings

    settings = EngineSettings(model="tiny-llama", load_format="dummy", device="cuda",
                              dtype="float32", max_num_seqs=16, max_model_len=256,
                              kv_cache_memory_gb=0.05, async_scheduling=True,
                              speculative_method=speculative_method, **SPEC)  # fmt: skip
    prompts = [[(5 * i + j % 7) % 400 + 10 for j in range(12 + 9 * i)] for i in range(6)]
    params = _params() + _params()[:1]

    def run(with_faulty: bool) -> dict[str, RequestOutput]:
        engine = LLMEngine.from_settings(settings)
        assert engine.runner.graphs is not None and engine.async_scheduling
        done: dict[str, RequestOutput] = {}
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            engine.add_request(f"r{i}", prompt, p)
            if with_faulty and i == 2:
                engine.add_request("topk", prompt, _past_the_schema(temperature=0.7, top_k=2**63))
            done.update((out.request_id, out) for out in engine.step())
        while engine.has_unfinished_requests():
            done.update((out.request_id, out) for out in engine.step())
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        return done

    expected = {request_id: _summary(out) for request_id, out in run(False).items()}
    got = run(True)
    assert got.pop("topk").finish_reason == "internal_error"
    assert {request_id: _summary(out) for request_id, out in got.items()} == expected
