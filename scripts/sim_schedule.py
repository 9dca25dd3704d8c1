#!/usr/bin/env python
"""What the scheduler does with a workload, without a model: the real Scheduler, BlockManager and
Updater run their steps on the CPU, every sampled token a constant, so the counts are exact for
the scheduling rule and say nothing about kernel speed.

For each step it records the sequences decoding and the tokens computed, and over the run the
preemptions (and the most any one sequence suffered) and the tokens computed again after them
(a preempted sequence drops its KV and recomputes its prompt and what it had generated).
Prints one summary; --output-json writes it.

    python scripts/sim_schedule.py --num-blocks 51714 --input-len 1024 --output-len 2048 \
        --num-prompts 1000 --max-num-seqs 512 --max-num-batched-tokens 8192

(51,714 blocks of 16 is the FP8 cache the Qwen3-8B shape got on an H100; docs/benchmarks.md.)
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from tqdm import tqdm

from llm_worker.engine.block_manager import BlockManager
from llm_worker.engine.config import SchedulerConfig
from llm_worker.engine.request import Request
from llm_worker.engine.scheduler import Scheduler
from llm_worker.engine.sequence import SampledToken, Sequence, SequenceMetrics
from llm_worker.engine.step_result import StepResult
from llm_worker.engine.update import Updater
from llm_worker.schemas import SamplingParams

TOKEN = 7


def simulate(args: argparse.Namespace) -> dict[str, float]:
    max_model_len = args.input_len + args.output_len
    bm = BlockManager(args.num_blocks, args.block_size, enable_prefix_caching=False)
    config = SchedulerConfig(max_num_seqs=args.max_num_seqs,
                             max_num_batched_tokens=args.max_num_batched_tokens,
                             max_model_len=max_model_len, enable_chunked_prefill=True)  # fmt: skip
    scheduler = Scheduler(config, bm)
    updater = Updater(scheduler, eos_token_ids=(), max_model_len=max_model_len)
    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True)
    for i in range(args.num_prompts):
        # distinct prompts: no prefix is shared, as in `bench throughput`'s random ones
        seq = Sequence(request_id=f"r{i}", token_ids=[i] * args.input_len,
                       num_prompt_tokens=args.input_len, params=params,
                       metrics=SequenceMetrics(arrival_time=0.0))  # fmt: skip
        updater.add(Request(seq, detokenizer=None, generator=None, logprobs=None))
    decoding, computed = [], []
    num_finished, most_preempted = 0, 0
    with tqdm(total=args.num_prompts, desc="sim", unit="req", disable=args.no_progress) as bar:
        while updater.requests:
            plan = scheduler.schedule()
            if plan.is_empty:
                raise SystemExit("the scheduler planned an empty step with work left")
            decoding.append(sum(1 for s in plan.scheduled if s.num_new_tokens == 1))
            computed.append(plan.num_batched_tokens)
            tokens = [[SampledToken(TOKEN)] if s.samples else [] for s in plan.scheduled]
            updater.update(plan, StepResult(plan.scheduled, tokens=tokens), started=0.0)
            finished = updater.take_finished()
            most_preempted = max([most_preempted, *(r.seq.num_preemptions for r in finished)])
            num_finished += len(finished)
            bar.update(len(finished))
    useful = args.num_prompts * (args.input_len + args.output_len - 1)
    total = sum(computed)
    return {
        "steps": len(computed),
        "preemptions": scheduler.num_preemptions,
        "most_preemptions_of_one_sequence": most_preempted,
        "tokens_computed": total,
        "tokens_computed_again": total - useful,
        "recompute_share": (total - useful) / total,
        "mean_decoding_per_step": statistics.fmean(decoding),
        "median_decoding_per_step": statistics.median(decoding),
        "max_decoding_per_step": max(decoding),
        "finished": num_finished,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--num-blocks", type=int, required=True, help="KV cache blocks")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=2048)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--max-num-seqs", type=int, default=512)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.num_blocks * args.block_size < args.input_len + args.output_len:
        print("error: the cache cannot hold one sequence", file=sys.stderr)
        raise SystemExit(2)
    summary = simulate(args)
    for key, value in summary.items():
        print(f"{key}: {value:,.3f}" if isinstance(value, float) else f"{key}: {value:,}")
    if args.output_json:
        args.output_json.write_text(json.dumps({"args": vars(args) | {"output_json": None},
                                                "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
