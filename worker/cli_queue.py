"""The worker-side CLI commands: serve, enqueue, result, health."""

import argparse
import asyncio
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llm_worker.cli_errors import CliError
from llm_worker.schemas import Job, Result, SamplingParams
from llm_worker.service_settings import KafkaSettings, RedisSettings, ServiceSettings

# Where each flag lands in ServiceSettings; nested values are deep-merged over the environment's.
_SETTING_OF_FLAG = {
    "queue": ("queue",),
    "worker_id": ("worker_id",),
    "max_in_flight": ("max_in_flight",),
    "redis_url": ("redis", "url"),
    "kafka_bootstrap_servers": ("kafka", "bootstrap_servers"),
    "shutdown_grace_s": ("shutdown_grace_s",),
}
# A worker starting beside its broker waits for it as its own client would (about 10 s); a
# person running enqueue or result hears at once that nothing answers.
_SERVE_REDIS_RETRIES = 6
_CLIENT_REDIS_RETRIES = 0


def service_settings(args: argparse.Namespace) -> ServiceSettings:
    """Env and .env as ServiceSettings reads them, with the flags that were given on top."""
    from llm_worker.openai_batch import describe_validation

    given: dict[str, Any] = {}
    for flag, path in _SETTING_OF_FLAG.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        *parents, leaf = path
        target = given
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    try:
        return ServiceSettings(**given)
    except ValidationError as exc:
        raise CliError(f"invalid service settings: {describe_validation(exc)}") from exc


def cmd_serve(args: argparse.Namespace) -> int:
    from llm_worker.cli_broker import reach_queue
    from llm_worker.cli_settings import engine_settings

    settings = service_settings(args)
    engine = engine_settings(args)

    async def go() -> None:
        await reach_queue(settings, _SERVE_REDIS_RETRIES)
        from llm_worker.serve import serve  # torch and the engine: only once the brokers answer

        await serve(settings, engine)

    asyncio.run(go())
    return 0


def _prompt_job(args: argparse.Namespace) -> Job:
    try:
        return Job(
            id=args.id or uuid.uuid4().hex,
            prompt=args.prompt,
            sampling=SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature),
        )
    except ValidationError as exc:
        from llm_worker.openai_batch import describe_validation

        raise CliError(f"not a valid job: {describe_validation(exc)}") from exc


def cmd_enqueue(args: argparse.Namespace) -> int:
    """Exit 0 when every job went on the queue, 1 when lines of --file failed (the rest went)."""
    from llm_worker.job_file import read_job_file

    settings = service_settings(args)
    if settings.queue not in ("redis", "kafka"):
        raise CliError(f"enqueue puts jobs on redis or kafka, not {settings.queue!r}")
    if bool(args.file) == bool(args.prompt):
        raise CliError("give --prompt or --file (one of them)")
    if args.prompt:
        jobs, failures = [_prompt_job(args)], []
    else:
        try:
            read = read_job_file(args.file, settings.max_job_bytes)
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
        jobs, failures = read.jobs, read.failures
        for failure in failures:
            print(f"{args.file} {failure.describe()}", file=sys.stderr)
    if jobs:
        asyncio.run(_enqueue(jobs, settings, args.timeout_s if args.wait else None))
    if args.file:
        print(
            f"enqueued {len(jobs)} of {len(jobs) + len(failures)} jobs from {args.file}"
            + (f"; {_lines(len(failures))} failed (above)" if failures else ""),
            file=sys.stderr,
        )
    return 1 if failures else 0


def _lines(num: int) -> str:
    return f"{num} line" if num == 1 else f"{num} lines"


async def _enqueue(
    jobs: list[Job], settings: ServiceSettings, wait_timeout_s: float | None
) -> None:
    from llm_worker import client
    from llm_worker.cli_broker import reach_kafka, reach_redis

    if settings.queue == "kafka":
        await reach_kafka(settings.kafka)
        async with client.KafkaProducer(settings.kafka) as kafka_producer:
            ids = await kafka_producer.enqueue_many(jobs, settings.max_job_bytes)
    else:
        await reach_redis(settings.redis, _CLIENT_REDIS_RETRIES)
        async with client.RedisProducer(settings.redis) as redis_producer:
            ids = await redis_producer.enqueue_many(jobs, settings.max_job_bytes)
    print("\n".join(ids), flush=True)
    if wait_timeout_s is None:
        return
    if settings.queue == "kafka":  # results are polled from Redis
        await reach_redis(settings.redis, _CLIENT_REDIS_RETRIES)
    async with client.RedisProducer(settings.redis) as redis_producer:
        for job_id in ids:
            try:
                res = await redis_producer.wait(job_id, wait_timeout_s)
            except TimeoutError as exc:
                raise CliError(str(exc)) from exc
            print(res.model_dump_json(), flush=True)


def cmd_result(args: argparse.Namespace) -> int:
    from llm_worker import client
    from llm_worker.cli_broker import reach_redis

    settings = service_settings(args)

    async def go() -> Result | None:
        await reach_redis(settings.redis, _CLIENT_REDIS_RETRIES)
        async with client.RedisProducer(settings.redis) as producer:
            if not args.wait:
                return await producer.result(args.job_id)
            try:
                return await producer.wait(args.job_id, args.timeout_s)
            except TimeoutError:
                return None

    res = asyncio.run(go())
    if res is None:
        print(f"{args.job_id}: no terminal result yet", file=sys.stderr)
        return 1
    print(res.model_dump_json(indent=2))
    return 0


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


def _add_queue(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--queue", choices=["redis", "kafka"], help=f"{what} (env LLM_WORKER_QUEUE; else redis)"
    )


def _add_redis_url(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        help="redis:// or rediss:// (env LLM_WORKER_REDIS__URL; else "
        f"{RedisSettings.model_fields['url'].default})",
    )


def _add_kafka_servers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kafka-bootstrap-servers",
        help="host:port[,host:port] (env LLM_WORKER_KAFKA__BOOTSTRAP_SERVERS; else "
        f"{KafkaSettings.model_fields['bootstrap_servers'].default})",
    )


def _add_serve(sub: argparse._SubParsersAction, add_engine_args) -> None:
    p = sub.add_parser("serve", help="consume jobs from Redis or Kafka until SIGTERM")
    _add_queue(p, "where jobs come from")
    p.add_argument("--worker-id", help="stable id; a restarted worker replays its own pending jobs")
    p.add_argument(
        "--max-in-flight", type=int, help="jobs held at once (else 2 x max-num-seqs)"
    )
    _add_redis_url(p)
    _add_kafka_servers(p)
    p.add_argument(
        "--shutdown-grace-s", type=float, help="SIGTERM: seconds to finish in-flight jobs (30)"
    )
    add_engine_args(p)
    p.set_defaults(func=cmd_serve)


def _add_enqueue(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enqueue", help="put jobs on the queue (and optionally wait for results)")
    _add_queue(p, "where jobs go")
    _add_redis_url(p)
    _add_kafka_servers(p)
    p.add_argument("--prompt", help="one prompt")
    p.add_argument("--id", help="job id for --prompt (else a random one)")
    p.add_argument("--max-tokens", type=int, default=64, help="for --prompt (default: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="for --prompt (default: 0)")
    p.add_argument(
        "--file",
        type=Path,
        help="JSONL of jobs or OpenAI batch lines; a bad line is reported, the rest go",
    )
    p.add_argument("--wait", action="store_true", help="poll Redis and print each result")
    p.add_argument(
        "--timeout-s", type=float, default=600.0, help="--wait: seconds per job (default: 600)"
    )
    p.set_defaults(func=cmd_enqueue)


def _add_result(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("result", help="print a job's result from Redis")
    _add_redis_url(p)
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="poll until the job has a terminal result")
    p.add_argument("--timeout-s", type=float, default=600.0, help="--wait: seconds (default: 600)")
    p.set_defaults(func=cmd_result)


def add_queue_commands(sub: argparse._SubParsersAction, add_engine_args) -> None:
    _add_serve(sub, add_engine_args)
    _add_enqueue(sub)
    _add_result(sub)
    p = sub.add_parser("health", help="probe a worker's /healthz or /readyz; exit 0 when healthy")
    p.add_argument("--url", default="http://127.0.0.1:9400/readyz", help="(default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=3.0, help="seconds (default: 3)")
    p.set_defaults(func=cmd_health)
