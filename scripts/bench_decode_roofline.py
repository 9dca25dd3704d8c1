#!/usr/bin/env python
"""Decode at batch 1: time per output token against the memory roofline, measured in one run.

At batch 1 every step reads every matmul weight once, so no step can beat
weight bytes / copy bandwidth (the 1 GiB device copy, read + write counted, measured here).
The bytes are those the model holds (`CausalLM.matmul_weight_bytes`): with --quantization the
quantized layers as stored, scales and zeros included, beside the bf16 head.
Time per output token = (finish - first token) / (output tokens - 1) of one request run alone,
with decode CUDA graphs and async scheduling, with graphs alone, and eagerly (--enforce-eager),
on the same weights seed; also with the triton kernels launched plainly, not as programmatic
dependents (--no-pdl; the default launches them so on Hopper and later).
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from llm_worker.bench import measure_gpu_limits, random_prompts, release_gpu_memory
from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.models.config import ModelConfig
from llm_worker.models.loader import resolve
from llm_worker.schemas import SamplingParams


def time_per_output_token(engine: LLMEngine, prompt: list[int], output_len: int) -> float:
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=output_len)
    [out] = engine.generate([prompt], params)
    m = out.metrics
    assert m.first_token_time is not None and m.finished_time is not None
    return (m.finished_time - m.first_token_time) / (len(out.output_token_ids) - 1)


def measure(
    settings: EngineSettings, prompts: list[list[int]], output_len: int
) -> tuple[float, int]:
    """Median over the prompts (the first, a warm-up, is dropped) of seconds per output token,
    and the bytes of the matmul weights the model read each step."""
    engine = LLMEngine.from_settings(settings)
    model = engine.runner.model
    if settings.quantization is not None and model.quant is None:
        raise SystemExit("--quantization did not reach the model (the engine builder must pass it)")
    weight_bytes = model.matmul_weight_bytes()
    times = [time_per_output_token(engine, p, output_len) for p in prompts]
    del engine, model
    release_gpu_memory()
    return statistics.median(times[1:]), weight_bytes


# (name, enforce_eager, async_scheduling, pdl)
MODES = (
    ("graphs_async", False, True, True),
    ("graphs_async_no_pdl", False, True, False),
    ("graphs_sync", False, False, True),
    ("eager_sync", True, False, True),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-requests", type=int, default=4, help="run one after another")
    p.add_argument("--kv-cache-memory-gb", type=float, default=4.0)
    p.add_argument("--quantization", default=None, help="fp8, awq, gptq (dummy weights of it)")
    p.add_argument("--output-json", type=Path, default=None)
    p.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=[m[0] for m in MODES],
        help=f"which of {', '.join(m[0] for m in MODES)} to time (default: all)",
    )
    args = p.parse_args()
    modes = [m for m in MODES if m[0] in args.modes]
    if len(modes) != len(args.modes):
        p.error(f"--modes takes names from {[m[0] for m in MODES]}, got {args.modes}")

    limits = measure_gpu_limits()
    common = dict(model=args.model, load_format="dummy", dtype="bfloat16", max_num_seqs=8,
                  max_model_len=args.input_len + args.output_len + 16,
                  kv_cache_memory_gb=args.kv_cache_memory_gb,
                  quantization=args.quantization)  # fmt: skip
    figures: dict[str, float | str] = {"gpu": torch.cuda.get_device_name(), **limits}
    cfg = ModelConfig.from_hf(resolve(args.model, Path(".")).hf_config)
    prompts = random_prompts(args.num_requests + 1, args.input_len, cfg.vocab_size, 0)
    weight_bytes = 0
    for name, eager, overlap, pdl in modes:
        settings = EngineSettings(**common, enforce_eager=eager, async_scheduling=overlap, pdl=pdl)
        figures[f"tpot_{name}_s"], weight_bytes = measure(settings, prompts, args.output_len)
    roofline_s = weight_bytes / limits["copy_bytes_per_s"]
    figures.update(weight_bytes=weight_bytes, roofline_s=roofline_s,
                   quantization=args.quantization or "none")  # fmt: skip
    print(f"GPU {figures['gpu']}: copy {limits['copy_bytes_per_s'] / 1e12:.2f} TB/s; "
          f"{args.model} ({args.quantization or 'bf16'}) weights {weight_bytes / 1e9:.2f} GB "
          f"-> roofline {roofline_s * 1e3:.3f} ms/token")  # fmt: skip
    for name, *_ in modes:
        tpot = float(figures[f"tpot_{name}_s"])
        figures[f"ratio_{name}"] = tpot / roofline_s
        print(f"batch 1 decode ({name}): {tpot * 1e3:.3f} ms/token = "
              f"{tpot / roofline_s:.2f}x roofline, {1 / tpot:.1f} tokens/s")  # fmt: skip
    if args.output_json:
        args.output_json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
