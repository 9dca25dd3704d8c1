#!/usr/bin/env python
"""Where greedy streams of the bundled model part, and by how much: sync scheduling (the
reference) against async scheduling and against n-gram speculation, on the structured GPU
tests' batch (an extraction prompt constrained to each corpus schema, and a free prompt beside
it). For each stream that parts it prints the token index, the two tokens and the gap between
them in the reference's logprobs: the figures behind tests/near_ties.py's margins.

    python scripts/dev/greedy_parity.py --device cpu --dtype bfloat16 --num-schemas 12
"""

import argparse
import time
from pathlib import Path

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.engine.request import RequestOutput
from llm_worker.schemas import SamplingParams
from llm_worker.schemas.structured import StructuredOutputs

SCHEMAS = sorted((Path(__file__).parents[2] / "tests/structured/schemas").glob("*.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-schemas", type=int, default=12, help="of the corpus's schemas")
    parser.add_argument("--max-tokens", type=int, default=128, help="constrained streams")
    parser.add_argument("--free-max-tokens", type=int, default=48, help="unconstrained streams")
    args = parser.parse_args()
    started = time.perf_counter()

    def engine(**overrides: object) -> LLMEngine:
        settings = {"device": args.device, "dtype": args.dtype, "max_num_seqs": 128,
                    "max_model_len": 1024, **overrides}  # fmt: skip
        return LLMEngine.from_settings(EngineSettings.model_validate(settings))

    reference = engine(async_scheduling=False)
    prompts, params = [], []
    for path in SCHEMAS[: args.num_schemas]:
        name = path.stem.replace("_", " ")
        constraint = StructuredOutputs.model_validate({"json": path.read_text()})
        prompts.append(chat_ids(reference, f"Write one realistic {name} as JSON."))
        params.append(SamplingParams(temperature=0.0, max_tokens=args.max_tokens, logprobs=5,
                                     structured_outputs=constraint))  # fmt: skip
        prompts.append(chat_ids(reference, f"Tell me about {name}s."))
        params.append(SamplingParams(temperature=0.0, max_tokens=args.free_max_tokens,
                                     ignore_eos=True, logprobs=5))  # fmt: skip
    want = reference.generate(prompts, params)
    del reference
    runs: dict[str, dict[str, object]] = {"async": {"async_scheduling": True},
            "ngram": {"speculative_method": "ngram", "speculative_adaptive": False}}  # fmt: skip
    for name, overrides in runs.items():
        report(name, engine(**overrides).generate(prompts, params), want)
    print(f"{time.perf_counter() - started:.0f} s")


def report(name: str, got: list[RequestOutput], want: list[RequestOutput]) -> None:
    whole = 0
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        first = parting(g.output_token_ids, w.output_token_ids)
        if first is None:
            whole += 1
            continue
        theirs = w.output_token_ids[first] if first < len(w.output_token_ids) else None
        ours = g.output_token_ids[first] if first < len(g.output_token_ids) else None
        top = (w.logprobs[first].top_logprobs or {}) if w.logprobs and theirs is not None else {}
        gap = f"{top[theirs] - top[ours]:.3f}" if ours in top and theirs in top else "not in top"
        print(f"{name}: stream {index} parts at token {first}: {theirs} -> {ours}, gap {gap}")
    print(f"{name}: {whole} of {len(want)} streams whole")


def parting(got: list[int], want: list[int]) -> int | None:
    """The first index where the streams differ (one ending early counts); None when equal."""
    if got == want:
        return None
    return next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)))  # fmt: skip


def chat_ids(engine: LLMEngine, message: str) -> list[int]:
    tokenizer = engine.tokenizer
    messages = [{"role": "user", "content": message}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


if __name__ == "__main__":
    main()
