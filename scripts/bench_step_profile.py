#!/usr/bin/env python
"""Where a decode step's time goes: wall time per step, GPU kernel time by kind, and the gap.

Runs --batch-size requests to the decode phase, then profiles --num-steps decode steps with
torch.profiler and prints, per step: wall time, kernel time summed by kind (GEMM, attention,
KV store, other elementwise work) and wall minus kernel time (host time the GPU waited for).
Run once with and once without --enforce-eager: graph replay removes launch gaps, not kernel time.
"""

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from llm_worker.bench import random_prompts
from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.schemas import SamplingParams

KINDS = (
    ("gemm", re.compile(r"gemm|gemv|cutlass|nvjet|sm90|splitk|cublas", re.I)),
    ("attention", re.compile(r"paged_attention|merge_splits")),
    ("store_kv", re.compile(r"store_kv")),
)


def kind_of(kernel_name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(kernel_name)), "other")


def decode_engine(args: argparse.Namespace) -> LLMEngine:
    settings = EngineSettings(
        model=args.model, load_format="dummy", max_num_seqs=args.batch_size,
        max_model_len=args.input_len + args.num_steps + 64, enforce_eager=args.enforce_eager,
        kv_cache_memory_gb=args.kv_cache_memory_gb, quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
    )  # fmt: skip
    engine = LLMEngine.from_settings(settings)
    vocab = engine.runner.model.config.vocab_size
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=args.num_steps + 32)
    for i, prompt in enumerate(random_prompts(args.batch_size, args.input_len, vocab, 0)):
        engine.add_request(f"p{i}", prompt, params)
    while any(r.seq.num_output_tokens < 2 for r in engine.requests.values()):
        engine.step()
    for _ in range(3):
        engine.step()
    return engine


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--kv-cache-memory-gb", type=float, default=4.0)
    p.add_argument("--quantization", default=None, choices=["fp8", "awq", "gptq"],
                   help="dummy weights quantized this way (fp8: at load, like a bf16 checkpoint)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"],
                   help="the KV cache's dtype (auto: the model's)")
    p.add_argument("--top", type=int, default=12, help="kernels listed by total time")
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()

    engine = decode_engine(args)
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(args.num_steps):
            engine.step()
        wall_s = (time.perf_counter() - start) / args.num_steps
    by_kind: dict[str, float] = defaultdict(float)
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    for e in kernels:
        by_kind[kind_of(e.key)] += e.device_time_total / 1e6 / args.num_steps
    kernel_s = sum(by_kind.values())
    mode = "eager" if args.enforce_eager else "graphs"
    idle_s = wall_s - kernel_s  # one stream: time with no kernel running
    quant = f", {args.quantization}" if args.quantization else ""
    quant += ", fp8 KV cache" if args.kv_cache_dtype == "fp8" else ""
    print(f"{args.model}{quant}, batch {args.batch_size}, {mode}: {wall_s * 1e3:.3f} ms/step wall, "
          f"{kernel_s * 1e3:.3f} ms kernels, {idle_s * 1e3:.3f} ms GPU idle")  # fmt: skip
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<10} {seconds * 1e3:8.3f} ms/step")
    for e in sorted(kernels, key=lambda e: -e.device_time_total)[: args.top]:
        print(f"  {e.device_time_total / 1e3 / args.num_steps:8.3f} ms/step "
              f"x{e.count // args.num_steps:<4} {e.key[:90]}")  # fmt: skip
    if args.output_json:
        figures = {
            "wall_s": wall_s,
            "kernel_s": kernel_s,
            **{f"{k}_s": v for k, v in by_kind.items()},
        }
        args.output_json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
