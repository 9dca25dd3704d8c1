"""What the strict intake costs per message on the worker's event loop: size and encoding
checks, the nesting-depth scan, JSON with repeated-key and NaN checks, strict validation and
the content digest (worker/intake.py), for a few typical job sizes.

    python scripts/bench_intake.py

Prints microseconds per message for each size.
"""

import json
import time

from llm_worker.intake import IntakeLimits, parse_delivery
from llm_worker.queues.protocol import Delivery

LIMITS = IntakeLimits(max_job_bytes=1 << 20, max_json_depth=32)
_JOBS = {
    "short prompt": {"id": "j", "prompt": "The capital of France is",
                     "sampling": {"max_tokens": 64, "temperature": 0.7}},
    "4 KB chat": {"id": "j", "messages": [{"role": "user", "content": "word " * 800}],
                  "sampling": {"max_tokens": 256}, "metadata": {"traceparent": "00-" + "a" * 50}},
    "1,024 token ids": {"id": "j", "prompt_token_ids": list(range(1000, 2024)),
                        "sampling": {"max_tokens": 128, "stop_token_ids": [2, 3]}},
    "64 KB prompt": {"id": "j", "prompt": "word " * 13_000},
}


def us_per_message(payload: bytes, repeats: int) -> float:
    delivery = Delivery(payload, "j", 1, 0, "bench/0")
    start = time.perf_counter()
    for _ in range(repeats):
        parse_delivery(delivery, LIMITS)
    return (time.perf_counter() - start) * 1e6 / repeats


def main() -> None:
    print("| message | bytes | us per message |\n|---|---|---|")
    for name, job in _JOBS.items():
        payload = json.dumps(job).encode()
        repeats = max(20, 2_000_000 // len(payload))
        print(f"| {name} | {len(payload)} | {us_per_message(payload, repeats):.0f} |")


if __name__ == "__main__":
    main()
