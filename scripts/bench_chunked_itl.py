#!/usr/bin/env python
"""Chunked prefill: inter-token latency of running requests while long prompts arrive.

--num-decode requests decode (short prompts, long outputs). Phase 1 measures their inter-token
latency (ITL: time between two tokens of one request, counted when the token reaches the host)
for --num-steps steps with nothing else running; phase 2 adds one --long-len-token prompt every
--arrival-every steps, whose prefill is cut into chunks of at most --max-num-batched-tokens minus
the decode tokens, and measures the same requests' ITL again until every long prompt has its first
token. The figure is p99 ITL (phase 2) / p99 ITL (phase 1) for each token budget given; the long
prompts' TTFT is what a smaller budget costs. Each run also prints its slowest steps (tokens in
the step and the one before it, any garbage collection inside it) to show where a tail comes from.
"""

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_worker.bench import GcPauses, percentiles, random_prompts, release_gpu_memory
from llm_worker.config import EngineSettings
from llm_worker.engine.builder import freeze_startup_heap
from llm_worker.engine.llm_engine import PLACEHOLDER, LLMEngine
from llm_worker.engine.sequence import Sequence
from llm_worker.schemas import SamplingParams


@dataclass
class Phase:
    itls: list[float] = field(default_factory=list)
    # One row per step() call: (seconds, tokens it scheduled, prefill tokens among them, start).
    steps: list[tuple[float, int, int, float]] = field(default_factory=list)
    long_ttfts: list[float] = field(default_factory=list)
    gc: GcPauses = field(default_factory=GcPauses)


def decode_itls(
    engine: LLMEngine,
    ids: list[str],
    num_steps: int,
    long_prompts: list[list[int]],
    arrival_every: int,
) -> Phase:
    """Step the engine at least `num_steps` times, adding a long prompt every `arrival_every`
    steps, and on until every long prompt has its first token; the ITLs of `ids` meanwhile."""
    seqs = [engine.requests[i].seq for i in ids]

    def num_output(seq: Sequence) -> int:  # tokens on the host: async steps add placeholders
        return seq.num_output_tokens - (seq.token_ids[-1] == PLACEHOLDER)

    last_count = [num_output(s) for s in seqs]
    last_time = [time.perf_counter()] * len(seqs)
    out = Phase()
    pending = list(long_prompts)
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    long_seqs: list[Sequence] = []
    step = 0
    with out.gc:
        while step < num_steps or pending or any(r.startswith("long-") for r in engine.requests):
            if pending and step % arrival_every == 0:
                rid = f"long-{len(long_prompts) - len(pending)}"
                engine.add_request(rid, pending.pop(), params)
                long_seqs.append(engine.requests[rid].seq)
            tokens_before = engine.num_computed_tokens
            prefilled_before = sum(s.num_computed_tokens for s in long_seqs)
            start = time.perf_counter()
            for finished in engine.step():
                if finished.request_id.startswith("long-"):
                    m = finished.metrics
                    assert m.first_token_time is not None
                    out.long_ttfts.append(m.first_token_time - m.arrival_time)
            now = time.perf_counter()
            tokens = engine.num_computed_tokens - tokens_before
            prefilled = sum(s.num_computed_tokens for s in long_seqs) - prefilled_before
            out.steps.append((now - start, tokens, prefilled, start))
            for j, seq in enumerate(seqs):
                count = num_output(seq)
                if count > last_count[j]:
                    if last_count[j] > 0:
                        out.itls.append(now - last_time[j])
                    last_count[j], last_time[j] = count, now
            step += 1
    return out


def slowest_steps(phase: Phase, n: int) -> list[dict[str, float]]:
    """The n slowest step() calls, with the step before (async: its device work is waited for
    in this call) and any garbage collection that ran inside the call."""
    order = sorted(range(len(phase.steps)), key=lambda i: -phase.steps[i][0])[:n]
    rows = []
    for i in order:
        seconds, tokens, prefill, start = phase.steps[i]
        gc_s = sum(p for _, t, p in phase.gc.pauses if start <= t <= start + seconds)
        rows.append({
            "step": i, "ms": seconds * 1e3, "tokens": tokens, "prefill_tokens": prefill,
            "prev_tokens": phase.steps[i - 1][1] if i else 0, "gc_ms": gc_s * 1e3,
        })  # fmt: skip
    return rows


def measure(settings: EngineSettings, args: argparse.Namespace) -> dict[str, Any]:
    engine = LLMEngine.from_settings(settings)
    freeze_startup_heap()
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
    figures: dict[str, Any] = {
        f"decode_only_itl_{k}_s": v for k, v in percentiles(alone.itls).items()
    }
    figures |= {f"with_long_prompts_itl_{k}_s": v for k, v in percentiles(mixed.itls).items()}
    figures["p99_ratio"] = figures["with_long_prompts_itl_p99_s"] / figures["decode_only_itl_p99_s"]
    figures |= {f"long_prompt_ttft_{k}_s": v for k, v in percentiles(mixed.long_ttfts).items()}
    figures["steps"] = [len(alone.steps), len(mixed.steps)]
    figures["num_itls"] = [len(alone.itls), len(mixed.itls)]
    figures["gc_pauses_ms"] = [
        [(gen, round(s * 1e3, 3)) for gen, _, s in phase.gc.pauses if s > 1e-3]
        for phase in (alone, mixed)
    ]
    figures["slowest_steps"] = [slowest_steps(alone, 3), slowest_steps(mixed, 8)]
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
    p.add_argument("--num-steps", type=int, default=120, help="steps of phase 1 (at least, 2)")
    p.add_argument("--budgets", default="128,256,512", help="--max-num-batched-tokens values")
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
        ms = {k: v * 1e3 for k, v in r.items() if k.endswith("_s")}
        print(f"budget {budget} tokens/step, {args.num_decode} decoding + {args.long_len}-token "
              f"prompts: ITL p50 {ms['decode_only_itl_p50_s']:.2f} -> "
              f"{ms['with_long_prompts_itl_p50_s']:.2f} ms, p99 {ms['decode_only_itl_p99_s']:.2f}"
              f" -> {ms['with_long_prompts_itl_p99_s']:.2f} ms ({r['p99_ratio']:.2f}x); "
              f"long-prompt TTFT mean {ms['long_prompt_ttft_mean_s']:.1f} ms, p99 "
              f"{ms['long_prompt_ttft_p99_s']:.1f} ms; steps {r['steps']}, ITLs "
              f"{r['num_itls']}")  # fmt: skip
        phases = ("decode-only", "with long prompts")
        for name, rows in zip(phases, r["slowest_steps"], strict=True):
            print(
                f"  slowest steps, {name}: "
                + "; ".join(
                    f"#{s['step']} {s['ms']:.2f} ms ({s['tokens']} tokens, {s['prefill_tokens']} "
                    f"prefill, before it {s['prev_tokens']}, gc {s['gc_ms']:.1f} ms)"
                    for s in rows
                )
            )
        for name, pauses in zip(phases, r["gc_pauses_ms"], strict=True):
            if pauses:
                print(f"  garbage collections over 1 ms, {name} (generation, ms): {pauses}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {device}, model {args.model}")
    if args.output_json:
        args.output_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
