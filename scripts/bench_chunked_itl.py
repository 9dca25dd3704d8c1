#!/usr/bin/env python
"""Chunked prefill: inter-token latency of running requests while long prompts arrive.

--num-decode requests decode (short prompts, long outputs). Phase 1 measures their inter-token
latency (ITL: time between two tokens of one request) with nothing else running; phase 2 adds one
--long-len-token prompt every --arrival-every steps, whose prefill is cut into chunks of at most
--max-num-batched-tokens minus the decode tokens, and measures the same requests' ITL again.
The figure is p99 ITL (phase 2) / p99 ITL (phase 1) for each token budget given.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from schemas import SamplingParams
from worker.bench import percentiles, random_prompts, release_gpu_memory
from worker.config import EngineSettings
from worker.engine.llm_engine import PLACEHOLDER, LLMEngine
from worker.engine.sequence import Sequence


def decode_itls(
    engine: LLMEngine,
    ids: list[str],
    num_steps: int,
    long_prompts: list[list[int]],
    arrival_every: int,
) -> list[float]:
    """Step the engine `num_steps` times; ITLs of `ids`, adding a long prompt every few steps."""
    seqs = [engine.requests[i].seq for i in ids]

    def num_output(seq: Sequence) -> int:  # tokens on the host: async steps add placeholders
        return seq.num_output_tokens - (seq.token_ids[-1] == PLACEHOLDER)

    last_count = [num_output(s) for s in seqs]
    last_time = [time.perf_counter()] * len(seqs)
    itls: list[float] = []
    pending = list(long_prompts)
    for step in range(num_steps):
        if pending and step % arrival_every == 0:
            rid = f"long-{len(long_prompts) - len(pending)}-{time.monotonic_ns()}"
            engine.add_request(rid, pending.pop(), SamplingParams(max_tokens=1, ignore_eos=True))
        engine.step()
        now = time.perf_counter()
        for j, seq in enumerate(seqs):
            count = num_output(seq)
            if count > last_count[j]:
                if last_count[j] > 0:
                    itls.append(now - last_time[j])
                last_count[j], last_time[j] = count, now
    return itls


def measure(settings: EngineSettings, args: argparse.Namespace) -> dict[str, float]:
    engine = LLMEngine.from_settings(settings)
    vocab = engine.runner.model.config.vocab_size
    long_prompts = random_prompts(args.num_long + 1, args.long_len, vocab, 3)
    engine.generate(long_prompts[-1:], SamplingParams(max_tokens=2))  # warm-up, compiles
    max_tokens = engine.max_model_len - args.decode_prompt_len  # never done within the phases
    decode_params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=max_tokens)
    ids = [f"decode-{i}" for i in range(args.num_decode)]
    prompts = random_prompts(args.num_decode, args.decode_prompt_len, vocab, 4)
    for rid, prompt in zip(ids, prompts, strict=True):
        engine.add_request(rid, prompt, decode_params)
    while any(engine.requests[i].seq.num_output_tokens < 2 for i in ids):
        engine.step()  # every decode request is past its prefill
    alone = decode_itls(engine, ids, args.num_steps, [], 1)
    mixed = decode_itls(engine, ids, args.num_steps, long_prompts[:-1], args.arrival_every)
    figures = {f"decode_only_itl_{k}_s": v for k, v in percentiles(alone).items()}
    figures |= {f"with_long_prompts_itl_{k}_s": v for k, v in percentiles(mixed).items()}
    figures["p99_ratio"] = figures["with_long_prompts_itl_p99_s"] / figures["decode_only_itl_p99_s"]
    for rid in ids:
        engine.abort(rid)
    del engine
    release_gpu_memory()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--num-decode", type=int, default=32)
    p.add_argument("--decode-prompt-len", type=int, default=128)
    p.add_argument("--long-len", type=int, default=8192)
    p.add_argument("--num-long", type=int, default=4)
    p.add_argument("--arrival-every", type=int, default=24, help="steps between long prompts")
    p.add_argument("--num-steps", type=int, default=120, help="steps per phase")
    p.add_argument("--budgets", default="512,2048", help="--max-num-batched-tokens values")
    p.add_argument("--kv-cache-memory-gb", type=float, default=16.0)
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()

    results: dict[str, dict[str, float]] = {}
    for budget in (int(b) for b in args.budgets.split(",")):
        settings = EngineSettings(
            model=args.model, load_format="dummy", max_num_seqs=args.num_decode + 8,
            max_model_len=args.long_len + 2 * args.num_steps + 64,
            max_num_batched_tokens=budget, kv_cache_memory_gb=args.kv_cache_memory_gb,
        )  # fmt: skip
        results[str(budget)] = r = measure(settings, args)
        ms = {k: v * 1e3 for k, v in r.items()}
        print(f"budget {budget} tokens/step, {args.num_decode} decoding + {args.long_len}-token "
              f"prompts: ITL p50 {ms['decode_only_itl_p50_s']:.2f} -> "
              f"{ms['with_long_prompts_itl_p50_s']:.2f} ms, p99 {ms['decode_only_itl_p99_s']:.2f}"
              f" -> {ms['with_long_prompts_itl_p99_s']:.2f} ms "
              f"({r['p99_ratio']:.2f}x)")  # fmt: skip
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {device}, model {args.model}")
    if args.output_json:
        args.output_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
