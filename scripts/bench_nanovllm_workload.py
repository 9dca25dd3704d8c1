#!/usr/bin/env python
"""The nano-vllm README workload: 256 sequences, input and output lengths uniform in 100-1024.

Random token ids, temperature 0.6, EOS ignored, all submitted at once; prints output tokens/s
(the README's figure for Qwen3-0.6B on an RTX 4070 laptop: nano-vllm 1,434, vLLM 1,362).
"""

import argparse
import json
import random
from pathlib import Path

import torch

from llm_worker.bench import run_throughput
from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.schemas import SamplingParams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="qwen3-0.6b")
    p.add_argument("--num-seqs", type=int, default=256)
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()

    settings = EngineSettings(
        model=args.model, load_format="dummy", max_model_len=4096, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=args.enforce_eager,
    )  # fmt: skip
    engine = LLMEngine.from_settings(settings)
    rng = random.Random(0)
    vocab = min(engine.runner.model.config.vocab_size, 32000)

    def lengths() -> list[int]:
        return [rng.randint(args.min_len, args.max_len) for _ in range(args.num_seqs)]

    prompts = [[rng.randint(100, vocab - 1) for _ in range(n)] for n in lengths()]
    output_lens = lengths()
    params = SamplingParams(temperature=0.6, ignore_eos=True)
    run_throughput(engine, prompts[:4], 8, show_progress=False, params=params)  # warm-up
    result = run_throughput(engine, prompts, output_lens, show_progress=False, params=params)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{device}, {args.model}, {args.num_seqs} seqs: {result.num_output_tokens} output "
          f"tokens in {result.elapsed_s:.2f} s = {result.output_tokens_per_s:.2f} output tokens/s "
          f"({result.line()})")  # fmt: skip
    if args.output_json:
        args.output_json.write_text(json.dumps({**vars(result), "device": device}, indent=2))


if __name__ == "__main__":
    main()
