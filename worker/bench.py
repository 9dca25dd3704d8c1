"""`llm-worker bench throughput | latency`: vLLM-style offline benchmarks over the engine."""

import argparse
import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from llm_worker.schemas import SamplingParams

if TYPE_CHECKING:  # the CLI builds its parser from this module; torch loads only to run
    from llm_worker.engine.llm_engine import LLMEngine


@dataclass
class ThroughputResult:
    num_requests: int
    elapsed_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    prefix_cache_hit_rate: float

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.elapsed_s

    @property
    def total_tokens_per_s(self) -> float:
        return (self.num_prompt_tokens + self.num_output_tokens) / self.elapsed_s

    @property
    def output_tokens_per_s(self) -> float:
        return self.num_output_tokens / self.elapsed_s

    def line(self) -> str:
        return (
            f"Throughput: {self.requests_per_s:.2f} requests/s, "
            f"{self.total_tokens_per_s:.2f} total tokens/s, "
            f"{self.output_tokens_per_s:.2f} output tokens/s"
        )


def random_prompts(num: int, input_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    high = min(vocab_size, 32000) - 1  # ordinary tokens, away from special ids at either end
    return [[rng.randint(100, high) for _ in range(input_len)] for _ in range(num)]


def prefix_repetition_prompts(
    num: int, prefix_len: int, suffix_len: int, num_prefixes: int, vocab_size: int, seed: int
) -> list[list[int]]:
    prefixes = random_prompts(num_prefixes, prefix_len, vocab_size, seed)
    suffixes = random_prompts(num, suffix_len, vocab_size, seed + 1)
    return [prefixes[i % num_prefixes] + suffixes[i] for i in range(num)]


def run_throughput(
    engine: "LLMEngine",
    prompts: list[list[int]],
    output_len: int | list[int],
    show_progress: bool = True,
    params: SamplingParams | None = None,
) -> ThroughputResult:
    """All prompts submitted at once, timed until the last finishes (vLLM's offline method).

    `output_len` is one length for all or one per prompt: it sets max_tokens of `params`
    (default: temperature 1, EOS ignored).
    """
    lens = output_len if isinstance(output_len, list) else [output_len] * len(prompts)
    template = params or SamplingParams(temperature=1.0, ignore_eos=True)
    hits0, queries0 = engine.block_manager.stats.hits, engine.block_manager.stats.queries
    start = time.perf_counter()
    for i, (prompt, n) in enumerate(zip(prompts, lens, strict=True)):
        p = template.model_copy(update={"max_tokens": n})
        engine.add_request(f"bench-{i}", prompt, p)
    num_output = 0
    with tqdm(total=len(prompts), unit="req", disable=not show_progress, desc="bench") as bar:
        while engine.has_unfinished_requests():
            for out in engine.step():
                num_output += len(out.output_token_ids)
                bar.update(1)
    elapsed = time.perf_counter() - start
    stats = engine.block_manager.stats
    queries = stats.queries - queries0
    return ThroughputResult(
        num_requests=len(prompts),
        elapsed_s=elapsed,
        num_prompt_tokens=sum(len(p) for p in prompts),
        num_output_tokens=num_output,
        prefix_cache_hit_rate=(stats.hits - hits0) / queries if queries else 0.0,
    )


def run_latency(
    engine: "LLMEngine",
    batch_size: int,
    input_len: int,
    output_len: int,
    num_iters: int,
    num_warmup: int,
    seed: int,
) -> list[float]:
    """Seconds per batch of `batch_size` prompts run to `output_len` tokens."""
    vocab = engine.runner.model.config.vocab_size
    params = SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=output_len)
    times = []
    for i in tqdm(range(num_warmup + num_iters), desc="latency", unit="iter"):
        prompts = random_prompts(batch_size, input_len, vocab, seed + i)
        start = time.perf_counter()
        engine.generate(prompts, params)
        if i >= num_warmup:
            times.append(time.perf_counter() - start)
    return times


def measure_gpu_limits() -> dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and bf16 GEMM FLOP/s, measured here."""
    import torch

    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")

    def timed(fn: Callable[[], object], iters: int) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / iters

    copy_s = timed(lambda: dst.copy_(src), 20)
    gemm_s = timed(lambda: a @ b, 20)
    return {"copy_bytes_per_s": 2 * src.numel() / copy_s, "bf16_flops": 2 * 8192**3 / gemm_s}


class GcPauses:
    """Wall time of every garbage collection while recording (gc.callbacks), by generation."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float]] = []  # (generation, start, seconds)
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((info["generation"], self._start, time.perf_counter() - self._start))

    def __enter__(self) -> "GcPauses":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    @property
    def seconds(self) -> float:
        return sum(seconds for _, _, seconds in self.pauses)


def release_gpu_memory() -> None:
    """Give the memory of engines no longer referenced back to the device (between engines)."""
    import torch

    gc.unfreeze()  # a frozen reference cycle would keep a dropped engine's tensors alive
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {"mean": statistics.fmean(values), "p50": pct(50), "p90": pct(90), "p99": pct(99)}


def add_throughput_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-len", type=int, default=128, help="prompt tokens, random dataset (default: 128)"
    )
    p.add_argument(
        "--output-len", type=int, default=128, help="output tokens, EOS ignored (default: 128)"
    )
    p.add_argument("--num-prompts", type=int, default=100, help="(default: 100)")
    p.add_argument(
        "--dataset",
        choices=["random", "prefix-repetition"],
        default="random",
        help="(default: random)",
    )
    for flag, default, meaning in (
        ("--prefix-len", 512, "shared tokens"),
        ("--suffix-len", 128, "unique tokens"),
        ("--num-prefixes", 4, "distinct prefixes"),
    ):
        note = f"prefix-repetition: {meaning} (default: {default})"
        p.add_argument(flag, type=int, default=default, help=note)
    p.add_argument("--output-json", type=Path, default=None, help="write the figures here")


def throughput_main(engine: "LLMEngine", args: argparse.Namespace) -> ThroughputResult:
    vocab = engine.runner.model.config.vocab_size
    if args.dataset == "random":
        prompts = random_prompts(args.num_prompts, args.input_len, vocab, args.seed or 0)
    else:
        prompts = prefix_repetition_prompts(
            args.num_prompts,
            args.prefix_len,
            args.suffix_len,
            args.num_prefixes,
            vocab,
            args.seed or 0,
        )
    result = run_throughput(engine, prompts, args.output_len)
    print(result.line())
    if args.output_json:
        figures = {
            **asdict(result),
            "requests_per_second": result.requests_per_s,
            "tokens_per_second": result.total_tokens_per_s,
            "output_tokens_per_second": result.output_tokens_per_s,
        }
        args.output_json.write_text(json.dumps(figures, indent=2))
    return result
