"""A poison corpus through one worker: thousands of bad messages of every kind
(scripts/poison_messages.py) with valid jobs interleaved, on Redis or Kafka. It must end with
0 worker exits, every message accounted for by exactly one terminal record (a result under its
id or a dead letter with the reason; a copy of a job adds none), every valid job completed, in
bounded time; and a worker started again afterwards must publish nothing.

    python scripts/poison_corpus.py --queue redis --redis-url redis://127.0.0.1:16430/0
    python scripts/poison_corpus.py --queue kafka --redis-url redis://127.0.0.1:16430/0 \\
        --kafka-bootstrap-servers 127.0.0.1:19130

Prints the corpus by kind and the accounting; exits 1 if any check fails.
"""

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiokafka.partitioner import DefaultPartitioner
from chaos_records import Records, records_of, unsettled_of
from chaos_setup import Namespace, add_broker_arguments
from poison_messages import MAX_JOB_BYTES, Message, build_corpus
from scale_fleet import Fleet, start_fleet

from llm_worker.schemas import Job, JobStatus, Result, job_digest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_arguments(p)
    p.add_argument("--messages", type=int, default=3300)
    p.add_argument("--valid", type=int, default=330, help="valid jobs among the messages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=1800.0, help="to drain the corpus")
    p.add_argument("--restart-watch-s", type=float, default=15.0,
                   help="how long the restarted worker is watched for anything published")
    return p.parse_args(argv)


def _partition_of(message: Message, num_partitions: int) -> int | None:
    """Kafka: a partition other than its id's home, for a misrouted message; else the key's."""
    if not message.misroute or message.job_id is None:
        return None
    partitions = list(range(num_partitions))
    home = DefaultPartitioner()(message.job_id.encode(), partitions, partitions)
    return (home + 1) % num_partitions


def _is_its_own(message: Message, result: Result) -> bool:
    """A valid job's result, for that job's content (not a later message's under its id)."""
    assert message.payload is not None
    return result.job_digest == job_digest(Job.model_validate_json(message.payload))


def _num_terminal(records: Records) -> int:
    return records.result_counts.total() + len(records.dead_letters)


async def _drain(ns: Namespace, fleet: Fleet, expected: int, timeout_s: float) -> float:
    start_s = time.monotonic()
    fleet.wait_ready(timeout_s=300)
    ready_s = time.monotonic()
    while _num_terminal(await records_of(ns)) < expected:
        fleet.check_alive()  # a worker exit fails the run here, with its log
        if time.monotonic() - start_s > timeout_s:
            raise TimeoutError(f"not drained in {timeout_s:.0f} s")
        await asyncio.sleep(1.0)
    return time.monotonic() - ready_s


def check(corpus: list[Message], records: Records) -> dict[str, tuple[int, int]]:
    """What each expectation should count and did count."""
    got: Counter[str] = Counter()
    want: Counter[str] = Counter(m.expect for m in corpus if m.expect != "copy")
    for message in corpus:
        result = records.results.get(message.job_id or "")
        if message.expect == "completed" and result and result.status == JobStatus.COMPLETED \
                and _is_its_own(message, result):
            got["completed"] += 1
        elif message.expect == "expired" and result and result.status == JobStatus.EXPIRED:
            got["expired"] += 1
        elif message.expect.startswith("failed:") and result and result.error \
                and message.expect == f"failed:{result.error.code}":
            got[message.expect] += 1
    for code, count in records.dead_reasons().items():
        got[f"dead:{code}"] += count
    table = {key: (want[key], got[key]) for key in sorted(set(want) | set(got))}
    table["terminal records"] = (sum(want.values()), _num_terminal(records))
    table["job ids with more than one record"] = (0, len(records.duplicated()))
    return table


def print_tables(queue: str, corpus: list[Message], table: dict[str, tuple[int, int]],
                 summary: dict[str, object]) -> None:
    print(f"\nPoison corpus on {queue}: {len(corpus)} messages")
    print("| kind | messages | must end as |\n|---|---|---|")
    kinds = Counter((m.kind, m.expect) for m in corpus)
    for (kind, expect), count in sorted(kinds.items()):
        print(f"| {kind} | {count} | {expect} |")
    print("\n| record | expected | found |\n|---|---|---|")
    for key, (want, got) in table.items():
        print(f"| {key} | {want} | {got} |")
    print("\n| check | value |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")


async def run(args: argparse.Namespace) -> int:
    ns = Namespace.fresh(args, "p")
    corpus = build_corpus(args.messages, args.valid, args.seed, args.queue)
    await ns.put([(m.key, m.payload, _partition_of(m, args.partitions)) for m in corpus])
    spec = ns.fleet_spec(args, args.log_dir / ns.redis.prefix,
                         LLM_WORKER_MAX_JOB_BYTES=str(MAX_JOB_BYTES))
    fleet = start_fleet(spec, 1, ns.redis.prefix)
    try:
        drain_s = await _drain(ns, fleet, sum(m.expect != "copy" for m in corpus),
                               args.timeout_s)
    finally:
        [exit_code] = fleet.stop()
    before = await records_of(ns)
    again = start_fleet(spec, 1, ns.redis.prefix)  # the same worker id
    again.wait_ready(timeout_s=300)
    await asyncio.sleep(args.restart_watch_s)
    [restart_exit_code] = again.stop()
    after = await records_of(ns)
    unsettled = await unsettled_of(ns)
    table = check(corpus, after)
    summary = {
        "worker exits while serving": 0, "exit codes after SIGTERM": f"{exit_code}, "
        f"{restart_exit_code}", "drain seconds (worker ready to last record)": f"{drain_s:.0f}",
        "records published by the restarted worker": _num_terminal(after) - _num_terminal(before),
        "Kafka records of aborted transactions": after.num_aborted,
        "messages left unacked (Redis) / past the committed offset (Kafka)": unsettled,
    }
    print_tables(args.queue, corpus, table, summary)
    ok = all(want == got for want, got in table.values())
    republished = _num_terminal(after) - _num_terminal(before)
    return 0 if ok and not republished and not unsettled and exit_code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
