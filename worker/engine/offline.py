"""Offline use of the engine: submit prompts, step until each has finished, outputs in order."""

from collections.abc import Sequence
from typing import Any, Protocol

from llm_worker.engine.request import RequestOutput
from llm_worker.schemas import SamplingParams


class Engine(Protocol):
    """The verbs this loop drives (LLMEngine's)."""

    tokenizer: Any

    def add_request(self, request_id: str, prompt_token_ids: list[int],
                    params: SamplingParams) -> None: ...  # fmt: skip

    def step(self) -> list[RequestOutput]: ...


def run_to_completion(
    engine: Engine,
    id_prefix: str,
    prompts: Sequence[list[int] | str],
    params: SamplingParams | Sequence[SamplingParams],
) -> list[RequestOutput]:
    """Text prompts are encoded with the engine's tokenizer; one params applies to all."""
    param_list = (
        list(params) if not isinstance(params, SamplingParams) else [params] * len(prompts)
    )
    ids = [f"{id_prefix}-{i}" for i in range(len(prompts))]
    for request_id, prompt, p in zip(ids, prompts, param_list, strict=True):
        tokens = engine.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        engine.add_request(request_id, tokens, p)
    done: dict[str, RequestOutput] = {}
    while len(done) < len(ids):
        for out in engine.step():
            done[out.request_id] = out
    return [done[i] for i in ids]
