#!/usr/bin/env python
"""Print a worker's key metrics every few seconds, from its Prometheus endpoint.

python scripts/watch_metrics.py --url http://127.0.0.1:9400/metrics --interval-s 5
"""

import argparse
import time
import urllib.request

SHOWN = {
    "llm_worker_jobs_consumed_total": "consumed",
    "llm_worker_jobs_completed_total": "completed",
    "llm_worker_jobs_failed_total": "failed",
    "llm_worker_jobs_dead_lettered_total": "dead",
    "llm_worker_num_requests_running": "running",
    "llm_worker_num_requests_waiting": "waiting",
    "llm_worker_kv_cache_usage": "kv",
    "llm_worker_prefix_cache_hits": "hits",
    "llm_worker_prefix_cache_queries": "queries",
}


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for prefix, label in SHOWN.items():
            if name.startswith(prefix) and not name.endswith("_created"):
                values[label] = values.get(label, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:9400/metrics")
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument(
        "--count", type=int, default=0, help="stop after this many lines (0: never)"
    )
    args = parser.parse_args()
    shown = 0
    previous: dict[str, float] = {}
    while args.count == 0 or shown < args.count:
        values = scrape(args.url)
        rate = (values.get("completed", 0) - previous.get("completed", 0)) / args.interval_s
        hit_rate = values.get("hits", 0) / values["queries"] if values.get("queries") else 0.0
        print(
            time.strftime("%H:%M:%S"),
            " ".join(f"{k}={v:g}" for k, v in values.items()),
            f"jobs/s={rate if previous else 0:.2f} prefix_hit_rate={hit_rate:.2f}",
            flush=True,
        )
        previous = values
        shown += 1
        if args.count == 0 or shown < args.count:
            time.sleep(args.interval_s)


if __name__ == "__main__":
    main()
