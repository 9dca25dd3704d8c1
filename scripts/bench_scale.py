#!/usr/bin/env python
"""Throughput against the number of GPU workers (issue 8).

For each N in --workers, N `llm-worker serve` processes (one per GPU through
CUDA_VISIBLE_DEVICES, each with its own worker id) share one Redis stream, or one Kafka topic,
through its consumer group. The same workload (random-token prompts of a fixed length, a fixed
max_tokens with ignore_eos) runs for every N on a fresh stream / topic; the script prints
throughput(N) in output tokens/s and the scaling efficiency throughput(N) / (N x throughput(1)),
after checking that every job got exactly one terminal result (scripts/scale_checks.py).
Workers are stopped with SIGTERM between runs and must exit 0.

The clock. Redis: every job but the last is enqueued before the workers start, and the group is
created past them, so workers that are ready early see nothing. Once every worker's /readyz
answers, one MULTI moves the group back to the start of the stream and adds the last job (the
XADD wakes every blocked XREADGROUP), and the clock starts: all jobs are in the stream and the
consumer group alone spreads them. Kafka cannot hold a filled topic back from a group, so its
clock starts once every worker is ready and the group is Stable with N members, and the jobs
are produced on the clock (the time producing took is printed; the producer outruns the workers
by far). The clock stops when the results stream (Kafka: the workers' Redis mirror of the
results, kafka.mirror_results_to_redis) holds an entry for every job.

An untimed N=1 warm-up run (--warmup-jobs) goes first so that N=1 does not pay for kernel
compilation that the on-disk Triton cache then saves every later run.

  python scripts/bench_scale.py --workers 1,2,4 --json-out scale-redis.json
  python scripts/bench_scale.py --queue kafka --workers 1,2,4 --json-out scale-kafka.json
  python scripts/bench_scale.py --allow-cpu --model tiny-llama --num-jobs 40 --output-len 8 \\
      --input-len 16 --workers 1,2 --warmup-jobs 0      # functional check on a CPU-only box
"""

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

# This checkout's worker package, not whichever one an editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scale_fleet import REPO_ROOT, FleetSpec, LocalBroker, port_open, visible_gpus
from scale_runs import Run, run_kafka, run_redis

from llm_worker.bench import random_prompts
from llm_worker.models.config import NAMED_SHAPES
from llm_worker.schemas import Job, SamplingParams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", choices=["redis", "kafka"], default="redis")
    p.add_argument("--workers", default="1,2,4",
                   help="comma list of worker counts; capped at the visible GPUs unless "
                        "--allow-cpu (default: 1,2,4)")
    p.add_argument("--num-jobs", type=int, default=4000)
    p.add_argument("--model", default="qwen3-0.6b",
                   help=f"a named shape ({', '.join(NAMED_SHAPES)}) or an HF folder")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="dummy")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens per job")
    p.add_argument("--output-len", type=int, default=256, help="max_tokens per job (EOS ignored)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-in-flight", type=int, default=None,
                   help="jobs a worker holds (default: the worker's, 2 x max-num-seqs)")
    p.add_argument("--serve-args", default="",
                   help="more `llm-worker serve` flags in one string, e.g. "
                        "'--max-num-batched-tokens 8192' (they win over the script's)")
    p.add_argument("--seed", type=int, default=0, help="prompts and dummy weights")
    p.add_argument("--warmup-jobs", type=int, default=64, help="untimed N=1 run first; 0: none")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run the workers on the CPU, N not capped: a functional check only")
    p.add_argument("--cpu-threads", type=int, default=1, help="OMP_NUM_THREADS of CPU workers")
    p.add_argument("--cpu-kv-cache-gb", type=float, default=0.25)
    p.add_argument("--redis-url", help="default: scripts/start_redis.sh on --redis-port")
    p.add_argument("--redis-port", type=int, default=16479)
    p.add_argument("--kafka-bootstrap", help="default: scripts/start_kafka.sh on --kafka-port")
    p.add_argument("--kafka-port", type=int, default=19192)
    p.add_argument("--kafka-partitions", type=int, default=8, help="of each run's jobs topic")
    p.add_argument("--ready-timeout-s", type=float, default=900.0)
    p.add_argument("--result-timeout-s", type=float, default=3600.0)
    p.add_argument("--log-dir", type=Path, help="worker logs (default: a new temp folder)")
    p.add_argument("--keep-data", action="store_true", help="keep each run's keys and topics")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json-out", type=Path, help="write the summary here")
    return p.parse_args(argv)


def make_jobs(args: argparse.Namespace, num_jobs: int, stem: str) -> list[Job]:
    vocab_size = NAMED_SHAPES[args.model]["vocab_size"] if args.model in NAMED_SHAPES else (
        json.loads((Path(args.model) / "config.json").read_text())["vocab_size"])
    params = SamplingParams(temperature=args.temperature, max_tokens=args.output_len,
                            ignore_eos=True)
    prompts = random_prompts(num_jobs, args.input_len, vocab_size, args.seed)
    return [Job(id=f"{stem}-{i}", prompt_token_ids=ids, sampling=params)
            for i, ids in enumerate(prompts)]


def plan(args: argparse.Namespace) -> tuple[list[int], list[str] | None, str]:
    """Worker counts to run, the GPU of each worker slot (None: CPU), and the device's name."""
    counts = sorted({int(n) for n in args.workers.split(",")})
    if args.allow_cpu:
        return counts, None, f"CPU ({os.cpu_count()} cores), OMP_NUM_THREADS={args.cpu_threads}"
    gpus = visible_gpus()
    if not gpus:
        sys.exit("bench_scale: no GPU visible to nvidia-smi; --allow-cpu runs the workers on "
                 "the CPU as a functional check")
    kept = [n for n in counts if n <= len(gpus)]
    if kept != counts:
        print(f"only {len(gpus)} GPUs visible: skipping N = "
              f"{', '.join(str(n) for n in counts if n not in kept)}", file=sys.stderr)
    names = sorted({name for _, name in gpus})
    return kept, [index for index, _ in gpus], f"{len(gpus)} x {', '.join(names)}"


def fleet_spec(args: argparse.Namespace, gpu_ids: list[str] | None, log_dir: Path) -> FleetSpec:
    serve_args = ["--model", args.model, "--load-format", args.load_format,
                  "--max-num-seqs", str(args.max_num_seqs), "--seed", str(args.seed),
                  "--max-model-len", str(args.input_len + args.output_len)]
    if gpu_ids is None:
        serve_args += ["--device", "cpu", "--kv-cache-memory-gb", str(args.cpu_kv_cache_gb)]
    service_env = {"LLM_WORKER_QUEUE": args.queue, "LLM_WORKER_REDIS__URL": args.redis_url}
    if args.max_in_flight is not None:
        service_env["LLM_WORKER_MAX_IN_FLIGHT"] = str(args.max_in_flight)
    return FleetSpec(service_env, serve_args + shlex.split(args.serve_args), gpu_ids,
                     args.cpu_threads, log_dir)


async def run_all(args: argparse.Namespace, spec: FleetSpec, counts: list[int],
                  ) -> tuple[Run | None, list[Run]]:
    run_one = run_kafka if args.queue == "kafka" else run_redis
    base = f"scale{uuid.uuid4().hex[:8]}"
    warmup = None
    if args.warmup_jobs > 0:
        print(f"warm-up: N=1, {args.warmup_jobs} jobs (untimed)", file=sys.stderr)
        jobs = make_jobs(args, args.warmup_jobs, "warmup")
        warmup = await run_one(args, spec, 1, jobs, f"{base}-warmup")
    runs = []
    jobs = make_jobs(args, args.num_jobs, "job")
    for num_workers in counts:
        print(f"N={num_workers}: {len(jobs)} jobs through {args.queue}", file=sys.stderr)
        runs.append(await run_one(args, spec, num_workers, jobs, f"{base}-n{num_workers}"))
    return warmup, runs


def report(args: argparse.Namespace, device: str, runs: list[Run]) -> None:
    base = next((r for r in runs if r.num_workers == 1), None)
    for run in runs:
        if base is not None and base.output_tok_per_s > 0:
            run.efficiency = run.output_tok_per_s / (run.num_workers * base.output_tok_per_s)
    print(f"\n{args.queue}, {device}: {args.model} ({args.load_format}), {args.num_jobs} jobs x "
          f"{args.input_len} prompt / {args.output_len} output tokens, max-num-seqs "
          f"{args.max_num_seqs}")
    print(f"{'N':>3} {'ready s':>8} {'enqueue s':>9} {'wall s':>8} {'output tok':>10} "
          f"{'out tok/s':>10} {'efficiency':>10} {'exactly one':>12} {'exit':>6}  jobs per worker")
    for r in runs:
        efficiency = f"{r.efficiency:.3f}" if r.efficiency is not None else "n/a"
        once = f"{r.check.num_exactly_one}/{r.check.num_jobs}"
        exits = ",".join(str(c) for c in r.exit_codes)
        print(f"{r.num_workers:>3} {r.ready_s:>8.1f} {r.enqueue_s:>9.2f} {r.wall_s:>8.2f} "
              f"{r.check.num_output_tokens:>10} {r.output_tok_per_s:>10.1f} {efficiency:>10} "
              f"{once:>12} {exits:>6}  {list(r.check.jobs_per_worker.values())}")
        if not r.check.ok:
            print(f"    check failed: {r.check}")


def start_brokers(args: argparse.Namespace) -> list[LocalBroker]:
    """Redis always (Kafka runs poll the workers' Redis mirror); Kafka for --queue kafka."""
    brokers = []
    if args.redis_url is None:
        env = {"REDIS_PORT": str(args.redis_port)}
        brokers.append(LocalBroker.start("start_redis.sh", env, port_open(args.redis_port)))
        args.redis_url = brokers[-1].address
    if args.queue == "kafka" and args.kafka_bootstrap is None:
        env = {"KAFKA_PORT": str(args.kafka_port)}
        brokers.append(LocalBroker.start("start_kafka.sh", env, port_open(args.kafka_port)))
        args.kafka_bootstrap = brokers[-1].address
    return brokers


def write_json(path: Path, args: argparse.Namespace, device: str, warmup: Run | None,
               runs: list[Run]) -> None:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                            capture_output=True, text=True).stdout.strip()
    summary = {
        "issue": 8, "date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
        "device": device, "args": {k: str(v) if isinstance(v, Path) else v
                                   for k, v in vars(args).items()},
        "warmup": warmup.to_json() if warmup is not None else None,
        "runs": [r.to_json() for r in runs],
        "efficiency": {str(r.num_workers): r.efficiency for r in runs},
        "all_exactly_one": all(r.check.num_exactly_one == r.check.num_jobs for r in runs),
        "all_ok": all(r.ok for r in runs),
    }
    path.write_text(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts, gpu_ids, device = plan(args)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench_scale-"))
    print(f"worker logs: {log_dir}", file=sys.stderr)
    brokers = start_brokers(args)
    try:
        spec = fleet_spec(args, gpu_ids, log_dir)
        warmup, runs = asyncio.run(run_all(args, spec, counts))
    finally:
        for broker in reversed(brokers):
            broker.stop()
    report(args, device, runs)
    if args.json_out is not None:
        write_json(args.json_out, args, device, warmup, runs)
    return 0 if all(r.ok for r in runs) and (warmup is None or warmup.ok) else 1


if __name__ == "__main__":
    sys.exit(main())
