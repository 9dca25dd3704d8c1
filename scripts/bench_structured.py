#!/usr/bin/env python
"""Structured outputs (issue 27): what a grammar costs a step, and what it costs throughput.

mask  (runs now) the per-step work of B constrained rows, without a model: xgrammar's batch
      fill of their bitmask rows on the host, the copy of those rows to the device and the mask
      kernel over a [B, vocab] fp32 logits tensor, and advancing each matcher by one token. All
      rows constrained, and 10%. Rows sit at mixed points of an extraction schema (the corpus's
      invoice.json): inside strings, numbers, keys, enums. Vocabularies: the bundled SmolLM2's
      (49,152), and the Llama-3-8B shape's 128,256 ids over the SmolLM2 tokenizer (no Llama-3
      tokenizer is available offline; ids past the tokenizer are padding the grammar never
      allows). Compare the total with a step of the model (e2e's plain run, or docs/benchmarks).
e2e   output tokens/s of `LLMEngine.generate` with no row constrained, 10% and all
      (SamplingParams.structured_outputs = invoice.json), at each batch size, on the bundled
      model and on the Llama-3-8B shape with dummy weights and the SmolLM2 tokenizer
      (`--tokenizer`; no Llama-3 tokenizer is available offline: the shape's 128,256 logits are
      masked, ids past the tokenizer's 49,152 never allowed). xgrammar counts those 79,104 ids
      as special tokens, and each token a matcher takes costs time in proportion to them (7 ms
      a step for 256 rows on a 2-core host against 0.8 ms with SmolLM2's own 49,152), a cost no
      model with its own tokenizer pays; `llama3-8b-49k` is the same layers with the
      tokenizer's vocabulary as the logits width, as a real model has. Each batch size gets an
      engine with max_num_seqs = B and 4 x B prompts, so finished requests are replaced and the
      batch stays full. Constrained rows end when their grammar does (see mean_output_len). Each
      share runs --rounds times, in alternating order, after --warmup-rounds untimed rounds
      of every share (the first full run pays a start-up cost); the table gives the medians, and
      the garbage collector's seconds in a run (each engine's start-up heap is frozen once built,
      as serve and run-batch freeze it; --no-freeze-heap leaves it to the collector). Target:
      at most 5% slower at batch 256 on the 8B shape. Prints a table at the end.
      `--profile N`: after the timed rounds, one more run of each share under cProfile, and
      its N functions of most own time (the engine thread's: where its host time goes, and
      how long it waits for the device, `tolist`, or for the mask fill, `acquire`), then the
      engine's and the grammar backend's N of most time with callees. `--timeline N`: two more
      runs of each share, one timing every step by kind (decode, prefill, mixed) and one with
      N steps traced (torch.profiler): each host phase's time a step, and the device's idle
      time by the host phase it waited for (scripts/dev/step_timeline.py).

    python scripts/bench_structured.py mask --device cuda
    python scripts/bench_structured.py e2e --device cuda --json e2e.json
"""

import argparse
import cProfile
import io
import itertools
import json
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_worker.bench import GcPauses
from llm_worker.config import EngineSettings
from llm_worker.kernels.token_bitmask import apply_token_bitmask_, apply_token_bitmask_reference
from llm_worker.models.bundled import bundled_model_dir
from llm_worker.models.config import NAMED_SHAPES, ModelConfig
from llm_worker.schemas import SamplingParams
from llm_worker.schemas.structured import StructuredOutputs
from llm_worker.structured.compiler import GrammarCompiler
from llm_worker.structured.mask_filler import MaskFiller
from llm_worker.structured.matcher import SequenceMatcher
from llm_worker.structured.stats import StatsRecorder
from llm_worker.structured.vocab import GrammarVocab, grammar_vocab

SCHEMA = Path(__file__).resolve().parents[1] / "tests" / "structured" / "schemas" / "invoice.json"
LLAMA3_8B_VOCAB = 128_256
TOKENIZER_VOCAB_SUFFIX = "-49k"  # e2e: the shape with the bundled tokenizer's vocabulary


def timed_ms(fn: Callable[[], object], iters: int, cuda: bool) -> float:
    """Mean wall milliseconds of fn() (the device synchronised around each call on CUDA)."""
    times = []
    for i in range(iters + 3):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.fmean(times)


def matchers_at_mixed_points(
    grammar: Any, vocab: GrammarVocab, count: int, seed: int
) -> list[SequenceMatcher]:
    """`count` matchers, each part way through a random walk of the grammar."""
    rng = np.random.default_rng(seed)
    bitmask = torch.empty((1, vocab.num_bitmask_words), dtype=torch.int32)
    matchers: list[SequenceMatcher] = []
    while len(matchers) < count:
        matcher = SequenceMatcher(grammar)
        for _ in range(int(rng.integers(0, 60))):
            matcher.fill_row(bitmask, 0)
            bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")
            allowed = np.flatnonzero(bits[: vocab.vocab_size])
            allowed = allowed[~np.isin(allowed, vocab.stop_token_ids)]
            if allowed.size == 0:
                break
            matcher.accept([int(rng.choice(allowed))])
        matchers.append(matcher)
    return matchers


def mask_row(
    vocab: GrammarVocab,
    matchers: list[SequenceMatcher],
    batch: int,
    threads: int | str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    filler = MaskFiller(vocab.vocab_size, batch, StatsRecorder(),
                        num_threads=threads, pin_memory=cuda)  # type: ignore[arg-type]  # fmt: skip
    logits = torch.randn(batch, vocab.vocab_size, device=device)
    row_idx = (
        torch.arange(len(matchers), dtype=torch.int32).pin_memory()
        if cuda
        else (torch.arange(len(matchers), dtype=torch.int32))
    )
    apply = apply_token_bitmask_ if cuda else apply_token_bitmask_reference
    bitmask = filler.fill(matchers)

    def copy_and_apply() -> None:
        rows = bitmask.to(device, non_blocking=True)
        apply(logits, rows, row_idx.to(device, non_blocking=True), vocab.vocab_size)

    next_ids = [_one_allowed(bitmask[i], vocab) for i in range(len(matchers))]

    def advance() -> None:  # each row takes its token (as the engine does), then undoes it
        assert all(SequenceMatcher.try_accept_each(matchers, next_ids))
        for matcher in matchers:
            matcher.rollback(1)

    figures = {
        "fill_ms": timed_ms(lambda: filler.fill(matchers), args.iters, cuda=False),
        "copy_apply_ms": timed_ms(copy_and_apply, args.iters, cuda),
        "advance_ms": timed_ms(advance, args.iters, cuda=False),
    }
    total = sum(figures.values())
    return {"batch": batch, "constrained": len(matchers), "fill_threads": threads, **figures,
            "total_ms": total}  # fmt: skip


def _one_allowed(row: torch.Tensor, vocab: GrammarVocab) -> int:
    bits = np.unpackbits(row.numpy().view(np.uint8), bitorder="little")[: vocab.vocab_size]
    allowed = np.flatnonzero(bits)
    return int(allowed[~np.isin(allowed, vocab.stop_token_ids)][0])


def mask_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    folder = bundled_model_dir(EngineSettings().cache_dir)
    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    schema = json.loads(SCHEMA.read_text())
    rows = []
    for name, vocab_size in (("smollm2", config.vocab_size), ("llama3-8b", LLAMA3_8B_VOCAB)):
        vocab = grammar_vocab(tokenizer, vocab_size, config.eos_token_ids)
        compiler = GrammarCompiler(vocab, StatsRecorder())
        started = time.perf_counter()
        grammar = compiler.compile_now(StructuredOutputs.model_validate({"json": schema}))
        compile_ms = 1e3 * (time.perf_counter() - started)
        compiler.shutdown()
        pool = matchers_at_mixed_points(grammar, vocab, max(args.batch_sizes), seed=0)
        for batch, fraction, threads in itertools.product(
            args.batch_sizes, args.fractions, args.fill_threads
        ):
            constrained = pool[: max(1, round(batch * fraction))]
            row = {"vocab": name, "vocab_size": vocab_size, "compile_ms": compile_ms,
                   **mask_row(vocab, constrained, batch, threads, args)}  # fmt: skip
            rows.append(row)
            print(
                f"{name:10s} B={batch:4d} constrained={row['constrained']:4d} "
                f"threads={threads!s:4s}  "
                f"fill {row['fill_ms']:7.3f} ms  copy+apply {row['copy_apply_ms']:7.3f} ms  "
                f"advance {row['advance_ms']:7.3f} ms  total {row['total_ms']:7.3f} ms",
                flush=True,
            )
    return rows


def e2e_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    from llm_worker.bench import random_prompts, release_gpu_memory
    from llm_worker.engine.builder import freeze_startup_heap
    from llm_worker.engine.llm_engine import LLMEngine

    constraint = StructuredOutputs.model_validate({"json": json.loads(SCHEMA.read_text())})
    tokenizer_dir = bundled_model_dir(EngineSettings().cache_dir)
    scratch = tempfile.TemporaryDirectory(prefix="bench-structured-")
    rows = []
    for model in args.models:
        for batch in args.batch_sizes:
            shape = model != "smollm2"
            settings = EngineSettings.model_validate({
                "model": _model_arg(model, tokenizer_dir, Path(scratch.name)),
                "load_format": "dummy" if shape else args.load_format,
                "device": args.device, "max_num_seqs": batch, "seed": 0,
                **({"tokenizer": str(tokenizer_dir)} if shape else {}),
            })  # fmt: skip
            engine = LLMEngine.from_settings(settings)
            if args.freeze_heap:
                freeze_startup_heap()  # as serve and run-batch do; release_gpu_memory undoes it
            if getattr(engine, "structured", None) is None:
                raise SystemExit(
                    f"{model}: the engine has no structured-output backend (a dummy shape "
                    "needs a tokenizer)"
                )
            vocab = engine.runner.model.config.vocab_size
            num_prompts = 4 * batch
            prompts = random_prompts(num_prompts, args.input_len, vocab, seed=batch)
            warm = _params(batch, 1.0, constraint, min(16, args.output_len))
            engine.generate(prompts[:batch], warm)  # compiles the grammar, warms the graphs
            # On the GPU the first full run after that is slower than later ones, whichever
            # share it is (docs/benchmarks.md, "Structured outputs").
            for _ in range(args.warmup_rounds):
                for fraction in args.fractions:
                    engine.generate(prompts, _params(num_prompts, fraction, constraint,
                                                     args.output_len))  # fmt: skip
            runs: dict[float, list[dict[str, float]]] = {f: [] for f in args.fractions}
            for round_ in range(args.rounds):  # alternated, so no share always runs first
                order = args.fractions if round_ % 2 == 0 else args.fractions[::-1]
                for fraction in order:
                    params = _params(num_prompts, fraction, constraint, args.output_len)
                    runs[fraction].append(_timed_generate(engine, prompts, params))
            for fraction in args.fractions if args.profile else ():
                params = _params(num_prompts, fraction, constraint, args.output_len)
                print(f"--- profile: {model} batch {batch}, {fraction:.0%} constrained")
                print(_profiled_generate(engine, prompts, params, args.profile), flush=True)
            for fraction in args.fractions if args.timeline else ():
                from dev.step_timeline import step_census, traced_generate  # scripts/dev

                params = _params(num_prompts, fraction, constraint, args.output_len)
                print(f"--- steps: {model} batch {batch}, {fraction:.0%} constrained")
                print(step_census(engine, prompts, params), flush=True)
                print(f"--- timeline: {model} batch {batch}, {fraction:.0%} constrained, steps "
                      f"{args.timeline_from} to {args.timeline_from + args.timeline}")  # fmt: skip
                text = traced_generate(engine, prompts, params, args.timeline_from, args.timeline)
                print(text, flush=True)
            plain = statistics.median(r["rate"] for r in runs[0.0])
            for fraction in args.fractions:
                rate = statistics.median(r["rate"] for r in runs[fraction])
                row = {
                    "model": model, "batch": batch, "constrained_fraction": fraction,
                    "output_tokens_per_s": rate, "vs_unconstrained": rate / plain,
                    "runs_tokens_per_s": [r["rate"] for r in runs[fraction]],
                    "mean_output_len": statistics.fmean(r["mean_len"] for r in runs[fraction]),
                    "steps": statistics.median(r["steps"] for r in runs[fraction]),
                    "gc_s": statistics.median(r["gc_s"] for r in runs[fraction]),
                    "stopped_share": statistics.fmean(r["stopped"] for r in runs[fraction]),
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
            del engine
            release_gpu_memory()
    return rows


def _model_arg(model: str, tokenizer_dir: Path, scratch: Path) -> str:
    """A named shape, or for NAME-49k a folder whose config is NAME's with the bundled
    tokenizer's vocabulary (size and EOS) as its own."""
    if not model.endswith(TOKENIZER_VOCAB_SUFFIX):
        return model
    smollm2 = json.loads((tokenizer_dir / "config.json").read_text())
    own_vocab = {"vocab_size": smollm2["vocab_size"], "eos_token_id": smollm2["eos_token_id"]}
    config = {**NAMED_SHAPES[model.removesuffix(TOKENIZER_VOCAB_SUFFIX)], **own_vocab}
    folder = scratch / model
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _timed_generate(
    engine: Any, prompts: list[list[int]], params: list[SamplingParams]
) -> dict[str, float]:
    start, first_step = time.perf_counter(), engine.num_steps
    with GcPauses() as collecting:
        outputs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    num_output = sum(len(o.output_token_ids) for o in outputs)
    return {
        "rate": num_output / elapsed,
        "steps": engine.num_steps - first_step,
        "gc_s": collecting.seconds,
        "mean_len": num_output / len(prompts),
        "stopped": sum(o.finish_reason == "stop" for o in outputs) / len(prompts),
    }


def _profiled_generate(
    engine: Any, prompts: list[list[int]], params: list[SamplingParams], top: int
) -> str:
    profile = cProfile.Profile()
    profile.enable()
    _timed_generate(engine, prompts, params)
    profile.disable()
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumtime").print_stats(r"engine/|structured/", top)
    return text.getvalue()


def _params(
    num: int, fraction: float, constraint: StructuredOutputs, max_tokens: int
) -> list[SamplingParams]:
    """Constrained requests spread evenly through the list; free ones ignore EOS, like the
    other throughput benchmarks; greedy, so a dummy model's outputs are reproducible."""
    num_constrained = round(num * fraction)
    chosen = set(np.linspace(0, num - 1, num_constrained).round().astype(int).tolist())
    free = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    bound = SamplingParams(temperature=0.0, max_tokens=max_tokens, structured_outputs=constraint)
    return [bound if i in chosen else free for i in range(num)]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["mask", "e2e"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 64, 256])
    p.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")],
                   default=None, help="constrained shares (mask: 1,0.1; e2e: 0,0.1,1)")  # fmt: skip
    p.add_argument("--fill-threads", type=lambda s: [x if x == "auto" else int(x)
                                                     for x in s.split(",")],
                   default=[1], help="mask: xgrammar's batch-fill threads, one run each "
                   "(auto: half the host's cores)")  # fmt: skip
    p.add_argument("--iters", type=int, default=20, help="mask: timed repeats per row")
    p.add_argument("--models", type=lambda s: s.split(","),
                   default=["smollm2", "llama3-8b", "llama3-8b" + TOKENIZER_VOCAB_SUFFIX])
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"],
                   help="e2e, bundled model: dummy runs random weights of its shape with its "
                   "tokenizer (where its weights cannot travel)")  # fmt: skip
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="e2e: runs of each share, alternating their order; the median counts",
    )
    p.add_argument("--warmup-rounds", type=int, default=1,
                   help="e2e: untimed runs of every share before the timed rounds")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="e2e: one more run of each share under cProfile; print its N "
                   "functions of most own time")  # fmt: skip
    p.add_argument("--timeline", type=int, default=0, metavar="N",
                   help="e2e: two more runs of each share: every step timed by kind, and N "
                   "steps traced by torch.profiler (each host phase's time a step, where the "
                   "device waits; scripts/dev/step_timeline.py)")  # fmt: skip
    p.add_argument("--timeline-from", type=int, default=40, metavar="STEP",
                   help="e2e: the first traced step (40: decode steps of the first wave)")
    p.add_argument("--freeze-heap", action=argparse.BooleanOptionalAction, default=True,
                   help="e2e: move each engine's start-up objects out of the cyclic garbage "
                   "collector's reach once it is built, as serve and run-batch do")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args(argv)
    if args.fractions is None:
        args.fractions = [1.0, 0.1] if args.mode == "mask" else [0.0, 0.1, 1.0]
    if args.mode == "e2e" and args.fractions[0] != 0.0:
        p.error("e2e: the first fraction must be 0 (the unconstrained baseline)")
    return args


def print_e2e_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'model':10s} {'batch':>5s} {'constrained':>11s} {'out tok/s':>10s} {'vs none':>8s} "
          f"{'mean out':>8s} {'stopped':>7s} {'steps':>6s} {'gc s':>6s}")  # fmt: skip
    for r in rows:
        ratio = f"{r['vs_unconstrained']:.3f}" if r["vs_unconstrained"] else "-"
        print(
            f"{r['model']:10s} {r['batch']:5d} {r['constrained_fraction']:11.0%} "
            f"{r['output_tokens_per_s']:10.1f} {ratio:>8s} {r['mean_output_len']:8.1f} "
            f"{r['stopped_share']:7.0%} {r['steps']:6.0f} {r['gc_s']:6.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = mask_main(args) if args.mode == "mask" else e2e_main(args)
    if args.mode == "e2e":
        print_e2e_table(rows)
    if args.json:
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
