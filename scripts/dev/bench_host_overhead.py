#!/usr/bin/env python
"""Host side of the engine, no GPU needed: step mix of a workload and host time per step.

1. Schedule mix: runs the scheduler and block manager alone (no model) over the seed workload's
   shape and counts the steps that are decode-only (CUDA-graph replays) against mixed ones.
2. Host time: a CPU engine at --batch-size decoding, with the model's forward and logits stubbed
   out (they return preallocated zeros), so a step's wall time is the engine's own Python and
   numpy work: scheduling, input building, sampling rows, greedy pick, token appends.
"""

import argparse
import random
import statistics
import time

import torch

from llm_worker.config import EngineSettings
from llm_worker.engine.block_manager import BlockManager
from llm_worker.engine.config import SchedulerConfig
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.engine.request import Request
from llm_worker.engine.scheduler import Scheduler
from llm_worker.engine.sequence import SampledToken, Sequence, SequenceMetrics
from llm_worker.engine.step_result import StepResult
from llm_worker.engine.update import Updater
from llm_worker.schemas import SamplingParams


def schedule_mix(args: argparse.Namespace) -> tuple[int, int]:
    """(steps, decode-only steps) for --num-prompts prompts run to --output-len tokens."""
    config = SchedulerConfig(max_num_seqs=args.batch_size, max_model_len=4096,
                             max_num_batched_tokens=args.max_num_batched_tokens,
                             enable_chunked_prefill=True)  # fmt: skip
    scheduler = Scheduler(config, BlockManager(1_000_000, 16, True, "sim"))
    updater = Updater(scheduler, eos_token_ids=(), max_model_len=config.max_model_len)
    rng = random.Random(0)
    params = SamplingParams(ignore_eos=True, max_tokens=args.output_len)
    for i in range(args.num_prompts):
        prompt = [rng.randint(100, 30_000) for _ in range(args.input_len)]
        seq = Sequence(str(i), prompt, args.input_len, params, SequenceMetrics(0.0))
        updater.add(Request(seq, detokenizer=None, generator=None, logprobs=None))
    num_steps = num_decode_only = 0
    while scheduler.num_running or scheduler.num_waiting:
        plan = scheduler.schedule()
        num_steps += 1
        num_decode_only += all(s.num_new_tokens == 1 for s in plan.scheduled)
        tokens = [[SampledToken(7)] if item.samples else [] for item in plan.scheduled]
        updater.update(plan, StepResult(plan.scheduled, tokens=tokens), started=0.0)
        updater.take_finished()
    return num_steps, num_decode_only


def host_ms_per_step(args: argparse.Namespace) -> list[float]:
    settings = EngineSettings(model="tiny-llama", load_format="dummy", device="cpu",
                              dtype="float32", max_num_seqs=args.batch_size, max_model_len=1024,
                              kv_cache_memory_gb=0.5)  # fmt: skip
    engine = LLMEngine.from_settings(settings)
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=800)
    for i in range(args.batch_size):
        engine.add_request(str(i), [100 + (i + j) % 400 for j in range(args.input_len)], params)
    while any(r.seq.num_output_tokens < 1 for r in engine.requests.values()):
        engine.step()
    model = engine.runner.model
    hidden = torch.zeros(args.batch_size, model.config.hidden_size)
    logits = torch.zeros(args.batch_size, model.config.vocab_size)
    # Instance attributes shadow the methods: the engine's calls land on the stubs.
    setattr(model, "forward", lambda input_ids, *_: hidden[: input_ids.shape[0]])  # noqa: B010
    setattr(model, "compute_logits", lambda h: logits[: h.shape[0]])  # noqa: B010
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.num_steps):
            engine.step()
        times.append((time.perf_counter() - start) / args.num_steps * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=256, help="max_num_seqs")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--num-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    num_steps, num_decode_only = schedule_mix(args)
    share = num_decode_only / num_steps
    print(
        f"schedule: {num_steps} steps, {num_decode_only} decode-only ({share:.1%}), "
        f"{num_steps - num_decode_only} with prefill"
    )
    times = host_ms_per_step(args)
    print(
        f"host time per decode step at batch {args.batch_size}: min {min(times):.2f} ms, "
        f"median {statistics.median(times):.2f} ms over {args.repeats} x {args.num_steps}"
    )


if __name__ == "__main__":
    main()
