#!/usr/bin/env python
"""What the queue path costs: the same jobs through the engine directly, through Redis Streams
and through Kafka, in one run with one engine, and the throughput ratios.

Needs running brokers (scripts/start_redis.sh, scripts/start_kafka.sh). Prefix caching is off
so every pass computes the same tokens; greedy outputs are compared across passes.
"""

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from llm_worker.client import KafkaProducer, RedisProducer
from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.queues.factory import build_queue
from llm_worker.queues.keys import RedisKeys
from llm_worker.queues.redis_conn import make_client
from llm_worker.schemas import Job, SamplingParams
from llm_worker.service import Service
from llm_worker.service_settings import KafkaSettings, RedisSettings, ServiceSettings


@dataclass
class PassResult:
    path: str
    wall_s: float
    num_jobs: int
    num_output_tokens: int
    outputs: dict[str, list[int]]
    engine_busy_s: float = 0.0  # time inside engine.step() during the pass

    @property
    def output_tok_per_s(self) -> float:
        return self.num_output_tokens / self.wall_s

    @property
    def engine_busy_fraction(self) -> float:
        """Share of the wall time the engine was stepping: what is left is time it waited
        for work. Less sensitive than wall time to other load on a shared machine."""
        return self.engine_busy_s / self.wall_s


class TimedEngine:
    """The engine with the time spent in step() added up (the only thing wrapped)."""

    def __init__(self, engine: LLMEngine) -> None:
        self._engine = engine
        self.busy_s = 0.0

    def step(self) -> list:
        start_s = time.perf_counter()
        try:
            return self._engine.step()
        finally:
            self.busy_s += time.perf_counter() - start_s

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)


def _timed(run: PassResult, engine: TimedEngine, busy_before_s: float) -> PassResult:
    run.engine_busy_s = engine.busy_s - busy_before_s
    return run


def make_jobs(num_jobs: int, max_tokens: int, stem: str = "bench") -> list[Job]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return [
        Job(id=f"{stem}-{i}", prompt=f"Question {i}: name a city and its country.", sampling=params)
        for i in range(num_jobs)
    ]


def run_generate(engine: LLMEngine, jobs: list[Job]) -> PassResult:
    """engine.generate(): every job submitted up front."""
    start_s = time.perf_counter()
    outputs = engine.generate([job.prompt or "" for job in jobs], [j.sampling for j in jobs])
    wall_s = time.perf_counter() - start_s
    by_id = {job.id: out.output_token_ids for job, out in zip(jobs, outputs, strict=True)}
    return PassResult("generate", wall_s, len(jobs), sum(map(len, by_id.values())), by_id)


def run_capped(engine: LLMEngine, jobs: list[Job], max_in_flight: int) -> PassResult:
    """The engine fed the way the worker feeds it (at most `max_in_flight` submitted, refilled
    after every step) but with no broker, JSON or event loop: the queue paths' baseline."""
    start_s = time.perf_counter()
    prompts = {job.id: engine.tokenizer.encode(job.prompt) for job in jobs}
    todo = list(reversed(jobs))
    by_id: dict[str, list[int]] = {}
    num_submitted = 0
    while len(by_id) < len(jobs):
        while todo and num_submitted - len(by_id) < max_in_flight:
            job = todo.pop()
            engine.add_request(job.id, prompts[job.id], job.sampling, priority=job.priority)
            num_submitted += 1
        for out in engine.step():
            by_id[out.request_id] = out.output_token_ids
    wall_s = time.perf_counter() - start_s
    return PassResult("engine", wall_s, len(jobs), sum(map(len, by_id.values())), by_id)


async def _wait_for_results(redis: Redis, keys: RedisKeys, jobs: list[Job], num_published: int,
                            runner: asyncio.Task[None]) -> list:
    """Poll the results stream's length (one integer: polling whole results would load the
    event loop the worker shares), then read the results once."""
    while await redis.xlen(keys.results_stream) < num_published:
        if runner.done():
            runner.result()  # the service died: show why
        await asyncio.sleep(0.02)
    return await redis.mget([keys.result(job.id) for job in jobs])


async def run_service(
    path: str,
    settings: ServiceSettings,
    engine: LLMEngine,
    jobs: list[Job],
    enqueue: Callable[[list[Job]], Awaitable[object]],
) -> PassResult:
    """A running, warmed-up worker (connected, group joined); the clock runs from the first
    enqueue to the last result a poller sees, so producing the jobs counts too."""
    source, sink = build_queue(settings)
    service = Service(settings, source, sink, engine, served_model="smollm2")
    redis = make_client(settings.redis)
    keys = RedisKeys(settings.redis.prefix)
    runner = asyncio.create_task(service.run())
    warmup = make_jobs(8, 1, stem="warmup")
    await enqueue(warmup)
    await _wait_for_results(redis, keys, warmup, len(warmup), runner)
    start_s = time.perf_counter()
    busy_at_start_s = getattr(engine, "busy_s", 0.0)
    await enqueue(jobs)
    raws = await _wait_for_results(redis, keys, jobs, len(warmup) + len(jobs), runner)
    wall_s = time.perf_counter() - start_s
    busy_s = getattr(engine, "busy_s", 0.0) - busy_at_start_s
    service.stop()
    await runner
    await redis.aclose()
    outputs = {job.id: json.loads(raw)["token_ids"] for job, raw in zip(jobs, raws, strict=True)}
    return PassResult(path, wall_s, len(jobs), sum(map(len, outputs.values())), outputs, busy_s)


def service_settings(args: argparse.Namespace, queue: str) -> ServiceSettings:
    stem = f"bench{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(
        bootstrap_servers=args.kafka_bootstrap,
        jobs_topic=f"{stem}.jobs",
        results_topic=f"{stem}.results",
        dead_letter_topic=f"{stem}.dead",
        group_id=f"{stem}-workers",
        num_partitions=4,
        mirror_results_to_redis=True,
    )
    return ServiceSettings(
        queue=queue,
        worker_id="bench",
        max_in_flight=args.max_in_flight,
        redis=RedisSettings(url=args.redis_url, prefix=stem),
        kafka=kafka,
        poll_timeout_s=0.05,
        watch_interval_s=0.25,
    )


async def one_round(
    args: argparse.Namespace, timed: TimedEngine, jobs: list[Job]
) -> list[PassResult]:
    engine: Any = timed  # every path drives the same wrapped engine
    max_in_flight = args.max_in_flight or 2 * engine.max_num_seqs  # the service's default
    # On a thread of its own, as in the service: on CPU, torch runs a non-main thread's ops
    # with a different OpenMP team, which alone changed the time 2.3x on the 2-core machine.
    busy_s = timed.busy_s
    run = await asyncio.to_thread(run_capped, engine, jobs, max_in_flight)
    results = [_timed(run, timed, busy_s)]
    if args.with_generate:
        busy_s = timed.busy_s
        results.append(_timed(run_generate(engine, jobs), timed, busy_s))
    if "redis" in args.queues:
        settings = service_settings(args, "redis")

        async def to_redis(batch: list[Job]) -> None:
            async with RedisProducer(settings.redis) as producer:
                await producer.enqueue_many(batch)

        results.append(await run_service("redis", settings, engine, jobs, to_redis))
    if "kafka" in args.queues:
        settings = service_settings(args, "kafka")

        async def to_kafka(batch: list[Job]) -> None:
            async with KafkaProducer(settings.kafka) as producer:
                await producer.enqueue_many(batch)

        results.append(await run_service("kafka", settings, engine, jobs, to_kafka))
    return results


def report(rounds: list[list[PassResult]]) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for index, first in enumerate(rounds[0]):
        passes = [passes_of_round[index] for passes_of_round in rounds]
        figures[first.path] = {
            "median_wall_s": statistics.median(p.wall_s for p in passes),
            "median_output_tok_per_s": statistics.median(p.output_tok_per_s for p in passes),
            "median_engine_busy": statistics.median(p.engine_busy_fraction for p in passes),
            "jobs": first.num_jobs,
        }
    base = figures["engine"]["median_output_tok_per_s"]
    reference = rounds[0][0].outputs
    print(f"{'path':<8} {'wall s':>8} {'out tok/s':>10} {'vs engine':>10} {'engine busy':>12} "
          f"{'same outputs':>13}")
    for index, (path, row) in enumerate(figures.items()):
        row["ratio_to_engine"] = row["median_output_tok_per_s"] / base
        same = all(p[index].outputs == reference for p in rounds)
        print(
            f"{path:<8} {row['median_wall_s']:>8.2f} {row['median_output_tok_per_s']:>10.1f} "
            f"{row['ratio_to_engine']:>10.3f} {row['median_engine_busy']:>12.3f} {same!s:>13}"
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-jobs", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=4, help="output tokens per job")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="engine batch cap")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="worker in-flight cap (default: 2x the engine's max_num_seqs)",
    )
    parser.add_argument("--queues", default="redis,kafka", help="comma list of redis,kafka")
    parser.add_argument("--with-generate", action="store_true",
                        help="also time engine.generate() with every job submitted up front")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all passes; medians")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--kafka-bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--output-json", type=Path, default=None)
    args = parser.parse_args()
    engine = LLMEngine.from_settings(
        EngineSettings(
            max_num_seqs=args.max_num_seqs, enable_prefix_caching=False, kv_cache_memory_gb=1.0
        )
    )
    jobs = make_jobs(args.num_jobs, args.max_tokens)
    engine.generate([jobs[0].prompt or ""], jobs[0].sampling)  # warm-up outside the timings
    timed = TimedEngine(engine)
    rounds = [asyncio.run(one_round(args, timed, jobs)) for _ in range(args.rounds)]
    figures = report(rounds)
    if args.output_json is not None:
        args.output_json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"output_json": str(args.output_json)},
                    "figures": figures,
                    "passes": [[asdict(p) | {"outputs": None} for p in r] for r in rounds],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
