"""What the default seed costs: every unseeded sampled job now carries a seed derived from its
id (worker/jobs.py), so a job that runs twice draws the same tokens, and a seeded row draws
from its own torch.Generator. This times the sampler's `sample_ids` for a batch of sampled rows
with no seeds against all seeded, per step.

    python scripts/bench_seeded_sampling.py --device cuda     # the GPU's figure
    python scripts/bench_seeded_sampling.py --device cpu --batch-sizes 1,16 --vocab 49152

Prints one row per batch size: ms per step unseeded, seeded, and the difference.
"""

import argparse
import time

import torch

from llm_worker.engine.sampler import SamplingRow, sample_ids
from llm_worker.schemas import SamplingParams


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", default="1,64,256")
    p.add_argument("--vocab", type=int, default=128_256, help="Llama-3's by default")
    p.add_argument("--steps", type=int, default=200)
    return p.parse_args()


def _rows(batch: int, seeded: bool, device: torch.device) -> list[SamplingRow]:
    rows = []
    for i in range(batch):
        params = SamplingParams(temperature=0.8, top_p=0.95, seed=i if seeded else None)
        generator = torch.Generator(device=device).manual_seed(i) if seeded else None
        rows.append(SamplingRow(params, [1, 2, 3], 3, generator))
    return rows


def ms_per_step(batch: int, seeded: bool, args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    logits = torch.randn(batch, args.vocab, device=device)
    rows = _rows(batch, seeded, device)
    shared = torch.Generator(device=device).manual_seed(0)
    for _ in range(5):
        sample_ids(logits, rows, shared)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        sample_ids(logits, rows, shared)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / args.steps


def main() -> None:
    args = parse_args()
    print(f"sample_ids, temperature 0.8, top_p 0.95, vocab {args.vocab}, {args.device}")
    print("| batch | unseeded ms/step | seeded ms/step | extra ms/step |\n|---|---|---|---|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        plain, seeded = ms_per_step(batch, False, args), ms_per_step(batch, True, args)
        print(f"| {batch} | {plain:.3f} | {seeded:.3f} | {seeded - plain:+.3f} |")


if __name__ == "__main__":
    main()
