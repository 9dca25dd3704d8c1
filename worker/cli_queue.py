"""The worker-side CLI commands: serve, enqueue, result, health."""

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from llm_worker.schemas import Job, Result, SamplingParams

# Flag -> the env var ServiceSettings reads, so flags beat env without re-implementing its merge.
SERVICE_FLAGS = {
    "queue": "LLM_WORKER_QUEUE",
    "worker_id": "LLM_WORKER_WORKER_ID",
    "max_in_flight": "LLM_WORKER_MAX_IN_FLIGHT",
    "redis_url": "LLM_WORKER_REDIS__URL",
    "kafka_bootstrap_servers": "LLM_WORKER_KAFKA__BOOTSTRAP_SERVERS",
    "shutdown_grace_s": "LLM_WORKER_SHUTDOWN_GRACE_S",
}


def add_service_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queue", choices=["redis", "kafka", "memory"], help="job source (env: LLM_WORKER_QUEUE)"
    )
    p.add_argument("--worker-id", help="stable id; a restarted worker replays its own pending jobs")
    p.add_argument(
        "--max-in-flight", type=int, help="jobs held at once (default: 2 x max-num-seqs)"
    )
    p.add_argument("--redis-url", help="redis:// or rediss:// (env: LLM_WORKER_REDIS__URL)")
    p.add_argument("--kafka-bootstrap-servers", help="host:port[,host:port]")
    p.add_argument(
        "--shutdown-grace-s", type=float, help="SIGTERM: seconds to finish in-flight jobs"
    )


def service_settings(args: argparse.Namespace):  # -> ServiceSettings
    from llm_worker.service_settings import ServiceSettings

    for flag, env in SERVICE_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[env] = str(value)
    return ServiceSettings()


def cmd_serve(args: argparse.Namespace) -> int:
    from llm_worker.config import EngineSettings, settings_from_args
    from llm_worker.queues.errors import QueueError
    from llm_worker.serve import serve

    try:
        asyncio.run(serve(service_settings(args), settings_from_args(EngineSettings, args)))
    except QueueError as exc:
        print(f"llm-worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _jobs_from_file(path: Path) -> Iterator[Job]:
    """Job JSON lines, or OpenAI batch lines (custom_id/method/url/body)."""
    from llm_worker.openai_batch import parse_line

    with path.open(encoding="utf-8") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            data = json.loads(raw)
            if isinstance(data, dict) and "custom_id" in data:
                yield parse_line(raw, line_no)[1]
            else:
                yield Job.model_validate(data)


def cmd_enqueue(args: argparse.Namespace) -> int:
    from llm_worker import client

    settings = service_settings(args)
    if args.file:
        jobs = list(_jobs_from_file(args.file))
    elif args.prompt:
        jobs = [
            Job(
                id=args.id or uuid.uuid4().hex,
                prompt=args.prompt,
                sampling=SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature),
            )
        ]
    else:
        print("llm-worker enqueue: give --prompt or --file", file=sys.stderr)
        return 2
    kafka = settings.kafka if settings.queue == "kafka" else None

    async def go() -> None:
        for job in jobs:
            await client.enqueue(
                job, redis=settings.redis, kafka=kafka, max_job_bytes=settings.max_job_bytes
            )
            print(job.id)
        if args.wait:
            for job in jobs:
                res = await client.wait(job.id, redis=settings.redis, timeout_s=args.timeout_s)
                print(res.model_dump_json())

    asyncio.run(go())
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    from llm_worker import client

    settings = service_settings(args)

    async def go() -> int:
        res: Result | None
        if args.wait:
            res = await client.wait(args.job_id, redis=settings.redis, timeout_s=args.timeout_s)
        else:
            res = await client.result(args.job_id, redis=settings.redis)
        if res is None:
            print(f"{args.job_id}: no terminal result yet", file=sys.stderr)
            return 1
        print(res.model_dump_json(indent=2))
        return 0

    return asyncio.run(go())


def cmd_health(args: argparse.Namespace) -> int:
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout_s) as r:
            print(f"{args.url}: {r.status} {r.read().decode().strip()}")
            return 0
    except urllib.error.HTTPError as e:
        print(f"{args.url}: {e.code} {e.read().decode().strip()}", file=sys.stderr)
    except OSError as e:
        print(f"{args.url}: unreachable ({e})", file=sys.stderr)
    return 1


def add_queue_commands(sub: argparse._SubParsersAction, add_engine_args) -> None:
    p = sub.add_parser("serve", help="consume jobs from Redis or Kafka until SIGTERM")
    add_service_arguments(p)
    add_engine_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("enqueue", help="put jobs on the queue (and optionally wait for results)")
    add_service_arguments(p)
    p.add_argument("--prompt", help="one prompt")
    p.add_argument("--id", help="job id for --prompt (default: random)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--file", type=Path, help="JSONL of jobs, or of OpenAI batch lines")
    p.add_argument("--wait", action="store_true", help="poll Redis and print each result")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("result", help="print a job's result from Redis")
    add_service_arguments(p)
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="poll until the job has a terminal result")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.set_defaults(func=cmd_result)

    p = sub.add_parser("health", help="probe a worker's /healthz or /readyz; exit 0 when healthy")
    p.add_argument("--url", default="http://127.0.0.1:9400/readyz")
    p.add_argument("--timeout-s", type=float, default=3.0)
    p.set_defaults(func=cmd_health)
