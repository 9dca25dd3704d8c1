#!/usr/bin/env python
"""llm-worker vs HF transformers generate() (static batching) on one workload, in one process.

Random-token prompts of --input-len, --output-len tokens each with EOS ignored, greedy on both
sides. On CUDA it also measures the GPU's copy bandwidth and bf16 GEMM peak in the same run and
prints model FLOPs utilization: MFU = 2 x matmul params x tokens processed / time / measured peak.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from llm_worker.bench import measure_gpu_limits, random_prompts, run_throughput
from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.models.loader import resolve
from llm_worker.schemas import SamplingParams


def hf_model(settings: EngineSettings, engine: LLMEngine) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve(settings.model, settings.cache_dir)
    dtype, device = engine.runner.dtype, engine.runner.device
    model: Any
    if source.folder is not None and settings.load_format != "dummy":
        model = AutoModelForCausalLM.from_pretrained(source.folder, dtype=dtype)
    else:
        cfg_dict = dict(source.hf_config)
        model_type = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[
            engine.runner.model.config.arch
        ]
        cfg = AutoConfig.for_model(
            model_type, **{k: v for k, v in cfg_dict.items() if k != "architectures"}
        )
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.to(device).eval()


@torch.inference_mode()
def hf_throughput(model: Any, prompts: list[list[int]], output_len: int, batch_size: int) -> float:
    """Output tokens/s of generate() over fixed batches (prompts of one length: no padding)."""
    device = next(model.parameters()).device
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        ids = torch.tensor(prompts[i : i + batch_size], device=device)
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=output_len,
            min_new_tokens=output_len,
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(prompts) * output_len / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    p.add_argument("--dtype", default="auto")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--hf-batch-sizes", default="1,32", help="comma-separated static batch sizes")
    p.add_argument(
        "--hf-num-batches",
        type=int,
        default=None,
        help="batches HF runs at each size (default: all prompts); rates are per second anyway",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.5,
        help="llm-worker's share of the GPU; HF's model and cache need the rest",
    )
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()

    settings = EngineSettings(
        model=args.model,
        load_format=args.load_format,
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.input_len + args.output_len + 16,
        max_num_batched_tokens=args.max_num_batched_tokens,
        **({"gpu_memory_utilization": args.gpu_memory_utilization}
           if torch.cuda.is_available() else {}),
    )  # fmt: skip
    engine = LLMEngine.from_settings(settings)
    cfg = engine.runner.model.config
    prompts = random_prompts(args.num_prompts, args.input_len, cfg.vocab_size, 0)
    run_throughput(engine, prompts[:2], 4, show_progress=False)  # warm-up
    ours = run_throughput(
        engine,
        prompts,
        args.output_len,
        params=SamplingParams(temperature=0, ignore_eos=True, max_tokens=args.output_len),
    )
    figures: dict[str, float] = {"llm_worker_output_tok_s": ours.output_tokens_per_s}
    print(f"llm-worker: {ours.line()}")
    model = hf_model(settings, engine)
    for bs in (int(x) for x in args.hf_batch_sizes.split(",")):
        n = len(prompts) if args.hf_num_batches is None else args.hf_num_batches * bs
        hf_tok_s = hf_throughput(model, prompts[:n], args.output_len, bs)
        figures[f"hf_batch{bs}_output_tok_s"] = hf_tok_s
        print(
            f"HF generate, static batch {bs}: {hf_tok_s:.2f} output tokens/s; "
            f"llm-worker / HF = {ours.output_tokens_per_s / hf_tok_s:.2f}x"
        )
    if torch.cuda.is_available():
        limits = measure_gpu_limits()
        tokens = ours.num_prompt_tokens + ours.num_output_tokens
        mfu = 2 * cfg.num_matmul_params * tokens / ours.elapsed_s / limits["bf16_flops"]
        figures.update(limits, mfu=mfu)
        print(
            f"GPU {torch.cuda.get_device_name()}: "
            f"copy {limits['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
            f"bf16 GEMM {limits['bf16_flops'] / 1e12:.0f} TFLOP/s; MFU {100 * mfu:.1f}% "
            f"({tokens} tokens in {ours.elapsed_s:.2f} s, {cfg.num_matmul_params / 1e9:.2f}B "
            "matmul params)"
        )
    if args.output_json:
        args.output_json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
