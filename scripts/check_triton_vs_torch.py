"""Greedy tokens of the same engine with the `triton` and the `torch` attention backends.

Both runs see the same prompts (mixed lengths, some sharing a prefix so prefix caching and
chunked prefill take part). Where the two token streams part, the torch run's log-probability
gap between its top two tokens at that step is printed: bf16 rounding may only flip near-ties.
bf16 logits of magnitude 16-32 are 0.125 apart, so a real model's bf16 gap can be one unit of
rounding and still read over NEAR_TIE_NATS; for a model with real weights the parting step is then
re-scored with the model in float32 (torch backend, prompt plus the common prefix), and the two
tokens the runs chose must lie within FP32_NEAR_TIE_NATS there.

    python scripts/check_triton_vs_torch.py --models smollm2,qwen3-0.6b
    TRITON_INTERPRET=1 python scripts/check_triton_vs_torch.py --models tiny-llama --device cpu \
        --dtype float32 --num-prompts 3 --max-tokens 4      # CPU smoke run of the script itself
"""

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine, RequestOutput
from llm_worker.schemas import SamplingParams

NEAR_TIE_NATS = 0.1  # top-2 log-probability gap under which bf16 rounding may flip the argmax
FP32_NEAR_TIE_NATS = 0.25  # two bf16 rounding units of a logit between 16 and 32


def make_prompts(vocab_size: int, num_prompts: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(vocab_size) for _ in range(40)]
    prompts = []
    for i in range(num_prompts):
        tail = [rng.randrange(vocab_size) for _ in range(rng.randrange(1, 300))]
        prompts.append(shared + tail if i % 2 else tail)
    return prompts


def real_weights(model: str) -> bool:
    return model == "smollm2"


def make_engine(model: str, backend: str, dtype: str, args: argparse.Namespace) -> LLMEngine:
    settings = EngineSettings(
        model=model,
        load_format="auto" if real_weights(model) else "dummy",
        attention_backend=backend,
        device=args.device,
        dtype=dtype,
        kv_cache_memory_gb=args.kv_cache_gb,
        max_model_len=1024,
        max_num_batched_tokens=args.max_num_batched_tokens,
        seed=args.seed,
    )
    return LLMEngine.from_settings(settings)


def run(model: str, backend: str, args: argparse.Namespace) -> list[RequestOutput]:
    engine = make_engine(model, backend, args.dtype, args)
    prompts = make_prompts(engine.runner.model.config.vocab_size, args.num_prompts, args.seed)
    params = SamplingParams(
        temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, logprobs=2
    )
    return engine.generate(prompts, params)


def top2_gap(output: RequestOutput, step: int) -> float:
    assert output.logprobs is not None
    top = sorted((output.logprobs[step].top_logprobs or {}).values(), reverse=True)
    return top[0] - top[1] if len(top) > 1 else float("inf")


def fp32_gap(engine: LLMEngine, prompt: list[int], tokens: tuple[int, int]) -> float:
    """|log p(a) - log p(b)| of the two parting tokens, the next token after `prompt` scored by a
    float32 engine (inf if either is outside its top 20)."""
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True, logprobs=20)
    out = engine.generate([prompt], params)[0]
    assert out.logprobs is not None
    top = out.logprobs[0].top_logprobs or {}
    a, b = tokens
    return abs(top[a] - top[b]) if a in top and b in top else float("inf")


def compare(model: str, args: argparse.Namespace) -> bool:
    torch_out = run(model, "torch", args)
    triton_out = run(model, "triton", args)
    num_same, ok, fp32_engine = 0, True, None
    for i, (a, b) in enumerate(zip(torch_out, triton_out, strict=True)):
        if a.output_token_ids == b.output_token_ids:
            num_same += 1
            continue
        step = next(j for j, (x, y) in enumerate(zip(a.output_token_ids, b.output_token_ids,
                                                         strict=True)) if x != y)  # fmt: skip
        gap = top2_gap(a, step)
        near = gap < NEAR_TIE_NATS
        detail = ""
        if not near and real_weights(model):
            fp32_engine = fp32_engine or make_engine(model, "torch", "float32", args)
            prefix = list(a.prompt_token_ids) + list(a.output_token_ids[:step])
            tokens = (a.output_token_ids[step], b.output_token_ids[step])
            gap32 = fp32_gap(fp32_engine, prefix, tokens)
            near = gap32 < FP32_NEAR_TIE_NATS
            detail = f", float32: the two tokens {gap32:.4f} nats apart"
        ok &= near
        print(f"  {model} prompt {i} (len {len(a.prompt_token_ids)}): parts at step {step}, "
              f"torch top-2 gap {gap:.4f} nats{detail} -> "
              f"{'near-tie' if near else 'NOT a near-tie'}")  # fmt: skip
    print(f"{model}: {num_same}/{len(torch_out)} prompts give identical greedy tokens "
          f"({args.max_tokens} tokens each, {args.dtype} on {args.device})")  # fmt: skip
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,qwen3-0.6b", help="comma-separated")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512,
                        help="small, so long prompts are chunked")  # fmt: skip
    parser.add_argument("--kv-cache-gb", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = [compare(model, args) for model in args.models.split(",")]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
