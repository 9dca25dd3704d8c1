#!/usr/bin/env python
"""Prefix caching: TTFT with a shared system prompt, with and without caching, in one run.

Every request is a --prefix-len-token system prompt shared by all, plus --suffix-len unique
tokens. One request primes the cache (as a long-running service would have), then two patterns:

- burst: --num-requests arrive at once (TTFT includes waiting for the prefill of those ahead);
- one by one: each request runs alone, so TTFT is its own prefill plus the first step.

The hit rate is prefix-cache hits / queries in tokens over the measured requests.
"""

import argparse
import json
from pathlib import Path

import torch

from llm_worker.bench import percentiles, random_prompts, release_gpu_memory
from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine, RequestOutput
from llm_worker.schemas import SamplingParams


def ttft_s(out: RequestOutput) -> float:
    assert out.metrics.first_token_time is not None
    return out.metrics.first_token_time - out.metrics.arrival_time


def run_pattern(
    engine: LLMEngine, prompts: list[list[int]], output_len: int, burst: bool
) -> tuple[list[float], float]:
    """TTFTs of `prompts` and the prefix-cache hit rate over them."""
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=output_len)
    stats = engine.block_manager.stats
    hits0, queries0 = stats.hits, stats.queries
    if burst:
        outs = engine.generate(prompts, params)
    else:
        outs = [engine.generate([p], params)[0] for p in prompts]
    stats = engine.block_manager.stats
    hit_rate = (stats.hits - hits0) / max(1, stats.queries - queries0)
    return [ttft_s(o) for o in outs], hit_rate


def measure(settings: EngineSettings, args: argparse.Namespace) -> dict[str, float]:
    engine = LLMEngine.from_settings(settings)
    vocab = engine.runner.model.config.vocab_size
    [prefix] = random_prompts(1, args.prefix_len, vocab, 1)
    suffixes = random_prompts(2 * args.num_requests + 2, args.suffix_len, vocab, 2)
    prompts = [prefix + s for s in suffixes]
    engine.generate(prompts[:2], SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up, prime
    figures: dict[str, float] = {}
    n = args.num_requests
    for name, burst, batch in (("burst", True, prompts[2 : 2 + n]),
                               ("one_by_one", False, prompts[2 + n :])):  # fmt: skip
        ttfts, hit_rate = run_pattern(engine, batch, args.output_len, burst)
        pct = percentiles(ttfts)
        figures.update({f"{name}_ttft_{k}_s": v for k, v in pct.items()})
        figures[f"{name}_hit_rate"] = hit_rate
    del engine
    release_gpu_memory()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--load-format", default="dummy", choices=["auto", "dummy"])
    p.add_argument("--prefix-len", type=int, default=500)
    p.add_argument("--suffix-len", type=int, default=100)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--kv-cache-memory-gb", type=float, default=None)
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()

    results = {}
    for caching in (False, True):
        settings = EngineSettings(
            model=args.model, load_format=args.load_format, max_num_seqs=args.max_num_seqs,
            max_model_len=args.prefix_len + args.suffix_len + args.output_len + 16,
            enable_prefix_caching=caching, kv_cache_memory_gb=args.kv_cache_memory_gb,
        )  # fmt: skip
        results["cached" if caching else "uncached"] = measure(settings, args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{device}, {args.model}: {args.prefix_len} shared + {args.suffix_len} unique tokens")
    for pattern in ("burst", "one_by_one"):
        off, on = results["uncached"], results["cached"]
        for stat in ("mean", "p50", "p99"):
            key = f"{pattern}_ttft_{stat}_s"
            print(f"{pattern:>10} TTFT {stat:>4}: no cache {off[key] * 1e3:8.2f} ms, "
                  f"cache {on[key] * 1e3:8.2f} ms, {off[key] / on[key]:.2f}x")  # fmt: skip
        print(f"{pattern:>10} hit rate: {on[f'{pattern}_hit_rate']:.3f} "
              f"(without caching {off[f'{pattern}_hit_rate']:.3f})")  # fmt: skip
    if args.output_json:
        args.output_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
