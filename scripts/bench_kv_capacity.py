#!/usr/bin/env python
"""KV-cache capacity at a long context, 16-bit cache against FP8 (e4m3), in one process.

For each --kv-cache-dtype: the blocks and tokens the cache gets under the same
--gpu-memory-utilization, and how many sequences of --context tokens it holds at once; then a
throughput run at that concurrency (--max-num-seqs set to it, one wave of that many prompts of
--context minus --output-len tokens, each decoding --output-len), so every sequence runs to the
full context with all of them resident. Prints one line per dtype and writes --output-json.

    python scripts/bench_kv_capacity.py --model llama3-8b --context 4096 --output-len 512
"""

import argparse
import json
from pathlib import Path

from llm_worker.bench import random_prompts, release_gpu_memory, run_throughput
from llm_worker.config import EngineSettings
from llm_worker.engine.block_manager import cdiv
from llm_worker.engine.llm_engine import LLMEngine


def measure(args: argparse.Namespace, kv_cache_dtype: str) -> dict[str, float]:
    """The largest number of `--context`-token sequences the cache holds at once (the
    profile's sampling memory grows with --max-num-seqs: one engine at max-num-seqs 1 bounds
    it, a second one set to that bound says how many really fit), then a wave of that many."""
    common = {
        "model": args.model, "load_format": "dummy", "max_model_len": args.context,
        "gpu_memory_utilization": args.gpu_memory_utilization, "kv_cache_dtype": kv_cache_dtype,
        "max_num_batched_tokens": args.max_num_batched_tokens,
    }  # fmt: skip
    settings = EngineSettings(**common, max_num_seqs=1)
    blocks_per_seq = cdiv(args.context, settings.block_size)
    engine = LLMEngine.from_settings(settings)
    bound = engine.runner.num_blocks // blocks_per_seq
    del engine
    release_gpu_memory()
    engine = LLMEngine.from_settings(EngineSettings(**common, max_num_seqs=bound))
    num_blocks = engine.runner.num_blocks
    num_seqs = min(bound, num_blocks // blocks_per_seq)
    figures: dict[str, float] = {
        "blocks": num_blocks,
        "tokens": num_blocks * settings.block_size,
        f"sequences_of_{args.context}": num_seqs,
    }
    if not args.skip_throughput:
        vocab = engine.runner.model.config.vocab_size
        prompts = random_prompts(num_seqs, args.context - args.output_len, vocab, seed=0)
        result = run_throughput(engine, prompts, args.output_len, show_progress=False)
        figures["output_tokens_per_s"] = result.output_tokens_per_s
        figures["total_tokens_per_s"] = result.total_tokens_per_s
        figures["preemptions"] = engine.stats().num_preemptions
    del engine
    release_gpu_memory()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--context", type=int, default=4096, help="tokens a sequence reaches")
    p.add_argument("--output-len", type=int, default=512, help="decoded tokens a sequence")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--dtypes", nargs="+", default=["auto", "fp8"])
    p.add_argument("--skip-throughput", action="store_true", help="capacity only")
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()
    results = {}
    for kv_cache_dtype in args.dtypes:
        results[kv_cache_dtype] = figures = measure(args, kv_cache_dtype)
        print(f"kv-cache-dtype {kv_cache_dtype}: " + ", ".join(
            f"{name} {value:,.0f}" for name, value in figures.items()))  # fmt: skip
    if args.output_json:
        args.output_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
