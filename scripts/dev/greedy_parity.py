#!/usr/bin/env python
"""Where greedy streams of the bundled model part, and by how much: sync scheduling (the
reference) against async scheduling and against n-gram speculation, on the structured GPU
tests' batch (an extraction prompt constrained to each corpus schema, and a free prompt beside
it). For each stream that parts it prints the token index, the two tokens and the gap between
them in the reference's logprobs: the figures behind tests/near_ties.py's margins.

    python scripts/dev/greedy_parity.py --device cpu --dtype bfloat16 --num-schemas 12
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.engine.request import RequestOutput
from llm_worker.schemas import SamplingParams
from llm_worker.schemas.structured import StructuredOutputs

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = sorted((ROOT / "tests/structured/schemas").glob("*.json"))


def _load_near_ties() -> ModuleType:
    """The GPU tests' oracle module, read from its file: the checkout's root on sys.path would
    put kernels/ in front of Hugging Face's `kernels`, which transformers imports."""
    spec = importlib.util.spec_from_file_location("near_ties", ROOT / "tests/near_ties.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


near_ties = _load_near_ties()


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
    parted = near_ties.partings(got, want)
    for p in parted:
        gap = "not in top" if p.gap is None else f"{p.gap:.3f}"
        print(f"{name}: stream {p.stream} parts at token {p.token}: {p.theirs} -> {p.ours}, "
              f"gap {gap}")  # fmt: skip
    print(f"{name}: {len(want) - len(parted)} of {len(want)} streams whole")


def chat_ids(engine: LLMEngine, message: str) -> list[int]:
    tokenizer = engine.tokenizer
    messages = [{"role": "user", "content": message}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


if __name__ == "__main__":
    main()
