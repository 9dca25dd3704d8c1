"""SIGKILL trials: three workers share a Redis stream or a Kafka topic; while they work through
a batch of jobs, workers are killed (SIGKILL, mid-job) and restarted. Afterwards every job must
have exactly one committed result record: 0 lost, 0 duplicated, none dead-lettered.

Half the jobs sample without a seed: a job that does run twice draws the same tokens (its seed
derives from its id). On Kafka the Redis mirror must hold exactly the committed record of each job.

    python scripts/kill_trials.py --queue redis --redis-url redis://127.0.0.1:16430/0
    python scripts/kill_trials.py --queue kafka --redis-url redis://127.0.0.1:16430/0 \\
        --kafka-bootstrap-servers 127.0.0.1:19130

Prints one row per trial and a total; exits 1 if any trial lost or duplicated a job.
"""

import argparse
import asyncio
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_records import records_of, redis_records, unsettled_of
from chaos_setup import Namespace, add_broker_arguments
from scale_fleet import Fleet, FleetSpec, start_fleet

from llm_worker.schemas import Job, SamplingParams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_arguments(p)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--jobs", type=int, default=150)
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs per trial")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=48,
                   help="the longest job; lengths spread from max-tokens / jobs up to it")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per trial")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@dataclass
class TrialRow:
    trial: int
    kills: int
    lost: int
    duplicated: int
    dead: int
    aborted: int  # Kafka records of aborted transactions (read_uncommitted only)
    unsettled: int  # messages left unacked (Redis) or past the committed offset (Kafka)
    mirror_disagrees: int  # Kafka: jobs whose Redis mirror differs from the committed record
    max_attempts: int
    seconds: float

    def cells(self) -> list[str]:
        counts = (self.trial, self.kills, self.lost, self.duplicated, self.dead, self.aborted,
                  self.unsettled, self.mirror_disagrees, self.max_attempts)
        return [str(v) for v in counts] + [f"{self.seconds:.0f}"]


def trial_jobs(n: int, max_tokens: int, stem: str) -> list[Job]:
    """Token-id prompts (the dummy models have no tokenizer); odd jobs sample unseeded. Lengths
    run from max_tokens / n up to max_tokens: jobs of one length batched together would finish
    in the same step, and the count of done jobs would jump past every kill's threshold."""
    jobs = []
    for i in range(n):
        temperature = 0.8 if i % 2 else 0.0
        length = max(1, max_tokens * (i + 1) // n)
        jobs.append(Job(id=f"{stem}-{i}", prompt_token_ids=[5 + i % 300, 7, 11, 13 + i % 17],
                        sampling=SamplingParams(temperature=temperature, max_tokens=length,
                                                ignore_eos=True)))
    return jobs


async def _num_done(ns: Namespace, ids: list[str]) -> int:
    records = await redis_records(ns.redis.url, ns.redis.prefix)  # Kafka: the mirror
    return sum(1 for i in ids if i in records.results)


def _kill_and_restart(fleets: dict[str, Fleet], spec: FleetSpec, rng: random.Random
                      ) -> str | None:
    """SIGKILL a serving worker (one still starting holds no job) and start it again."""
    serving = sorted(stem for stem, fleet in fleets.items() if fleet.workers[0].is_ready())
    if not serving:
        return None
    stem = rng.choice(serving)
    process = fleets[stem].workers[0].process
    process.send_signal(signal.SIGKILL)
    process.wait()
    fleets[stem] = start_fleet(spec, 1, stem)  # same worker id: Redis replays its pending
    return stem


async def run_trial(args: argparse.Namespace, trial: int, rng: random.Random) -> TrialRow:
    ns = Namespace.fresh(args, f"k{trial}")
    jobs = trial_jobs(args.jobs, args.max_tokens, f"t{trial}")
    await ns.put([(job.id.encode(), job.model_dump_json().encode(), None) for job in jobs])
    spec = ns.fleet_spec(args, args.log_dir / ns.redis.prefix)
    start_s = time.monotonic()
    fleets = {f"{ns.redis.prefix}-{w}": start_fleet(spec, 1, f"{ns.redis.prefix}-{w}")
              for w in "abc"[:args.workers]}
    ids = [job.id for job in jobs]
    kills = 0
    try:
        while (done := await _num_done(ns, ids)) < len(ids):
            if time.monotonic() - start_s > args.timeout_s:
                raise TimeoutError(f"trial {trial}: {done} of {len(ids)} done")
            due = done >= (kills + 1) * len(ids) // (args.kills + 2)
            if kills < args.kills and due and (killed := _kill_and_restart(fleets, spec, rng)):
                print(f"  trial {trial}: {done} done, killed {killed}", file=sys.stderr)
                kills += 1
            await asyncio.sleep(0.05)
    finally:
        for fleet in fleets.values():
            fleet.stop()
    return await _count(ns, ids, trial, kills, time.monotonic() - start_s)


async def _count(ns: Namespace, ids: list[str], trial: int, kills: int, seconds: float
                 ) -> TrialRow:
    records = await records_of(ns)
    mirror = await redis_records(ns.redis.url, ns.redis.prefix)  # Redis: the same records
    counted = [records.result_counts.get(i, 0) for i in ids]
    attempts = [r.attempts for r in records.results.values()]
    disagrees = sum(1 for i in ids if mirror.results.get(i) != records.results.get(i))
    return TrialRow(trial, kills, counted.count(0), sum(1 for c in counted if c > 1),
                    len(records.dead_letters), records.num_aborted, await unsettled_of(ns),
                    disagrees, max(attempts, default=0), seconds)


def print_table(queue: str, rows: list[TrialRow]) -> None:
    head = ["trial", "kills", "lost", "jobs with >1 record", "dead letters",
            "aborted records", "unsettled messages", "mirror disagrees", "max attempts",
            "seconds"]
    print(f"\nSIGKILL trials on {queue}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")
    total = TrialRow(0, sum(r.kills for r in rows), sum(r.lost for r in rows),
                     sum(r.duplicated for r in rows), sum(r.dead for r in rows),
                     sum(r.aborted for r in rows), sum(r.unsettled for r in rows),
                     sum(r.mirror_disagrees for r in rows),
                     max((r.max_attempts for r in rows), default=0),
                     sum(r.seconds for r in rows))
    print("| total | " + " | ".join(total.cells()[1:]) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    rows = [asyncio.run(run_trial(args, trial, rng)) for trial in range(1, args.trials + 1)]
    print_table(args.queue, rows)
    bad = [r for r in rows if r.lost or r.duplicated or r.dead or r.unsettled
           or r.mirror_disagrees]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
