"""Structured outputs on CUDA: the Triton mask kernel, the pinned bitmask copied without a
sync, CUDA graphs and async scheduling. The corpus's constrained outputs obey their schemas,
async scheduling gives the same tokens as sync, and unconstrained rows beside constrained ones
are the tokens of a run without them; greedy n-gram speculation gives the same tokens too."""

import json

import jsonschema
import pytest
import torch

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.schemas import SamplingParams
from llm_worker.schemas.structured import StructuredOutputs
from tests.structured.engine_fixtures import chat_ids
from tests.structured.test_schema_corpus import FORMATS, SCHEMAS

pytestmark = pytest.mark.gpu


def engine(**overrides: object) -> LLMEngine:
    settings = {"device": "cuda", "max_num_seqs": 128, "max_model_len": 1024,
                "gpu_memory_utilization": 0.5}  # fmt: skip
    return LLMEngine.from_settings(EngineSettings.model_validate({**settings, **overrides}))


def release(e: LLMEngine) -> None:
    e.runner.allocate_kv_cache(1)
    e.grammars.shutdown()
    del e
    torch.cuda.empty_cache()


def _batch(e: LLMEngine) -> tuple[list[list[int]], list[SamplingParams]]:
    prompts, params = [], []
    for path in SCHEMAS:
        prompts.append(chat_ids(e, f"Write one realistic {path.stem.replace('_', ' ')} as JSON."))
        constraint = StructuredOutputs.model_validate({"json": path.read_text()})
        params.append(
            SamplingParams(temperature=0.0, max_tokens=256, structured_outputs=constraint)
        )
        prompts.append(chat_ids(e, f"Tell me about {path.stem.replace('_', ' ')}s."))
        params.append(SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True))
    return prompts, params


def test_async_and_sync_agree_and_every_stopped_output_validates() -> None:
    plain = engine(async_scheduling=False)
    prompts, params = _batch(plain)
    expected = plain.generate(prompts, params)
    free = [i for i, p in enumerate(params) if p.structured_outputs is None]
    alone = plain.generate([prompts[i] for i in free], [params[i] for i in free])
    release(plain)
    overlapped = engine(async_scheduling=True)
    outputs = overlapped.generate(prompts, params)
    release(overlapped)
    assert [o.output_token_ids for o in outputs] == [o.output_token_ids for o in expected]
    assert [outputs[i].output_token_ids for i in free] == [o.output_token_ids for o in alone]
    stopped = 0
    for out, p in zip(outputs, params, strict=True):
        if p.structured_outputs is not None and out.finish_reason == "stop":
            schema = p.structured_outputs.json_schema
            jsonschema.validate(json.loads(out.text or ""), schema, format_checker=FORMATS)
            stopped += 1
    assert stopped >= 0.8 * len(SCHEMAS)


def test_greedy_ngram_speculation_gives_the_same_constrained_tokens() -> None:
    plain = engine()
    prompts, params = _batch(plain)
    expected = plain.generate(prompts, params)
    release(plain)
    spec = engine(speculative_method="ngram", speculative_adaptive=False)
    outputs = spec.generate(prompts, params)
    release(spec)
    assert [o.output_token_ids for o in outputs] == [o.output_token_ids for o in expected]
