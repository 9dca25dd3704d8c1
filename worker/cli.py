"""`llm-worker`: run-batch, bench, and the worker commands. `llm-worker COMMAND --help`."""

import argparse
import gc
import logging
import sys
from pathlib import Path

from llm_worker.cli_errors import CliError
from llm_worker.cli_settings import engine_settings
from llm_worker.config import EngineSettings, add_settings_arguments


def _engine(args: argparse.Namespace):  # -> LLMEngine, imported late so --help stays fast
    from llm_worker.engine.builder import freeze_startup_heap
    from llm_worker.engine.llm_engine import LLMEngine

    settings = engine_settings(args)
    engine = LLMEngine.from_settings(settings)
    freeze_startup_heap()  # one engine for the life of the command
    return engine, settings


def cmd_run_batch(args: argparse.Namespace) -> int:
    from llm_worker.batch_scan import BatchInputError, check_batch_input
    from llm_worker.run_batch import run_batch

    try:
        check_batch_input(args.input, args.allow_duplicate_ids)
    except BatchInputError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot read {args.input}: {exc.strerror or exc}") from exc
    if not args.output.parent.is_dir():
        raise CliError(f"{args.output}: no such directory {args.output.parent}")
    engine, settings = _engine(args)
    served = settings.served_model_name or settings.model
    summary = run_batch(
        engine,
        served,
        args.input,
        args.output,
        args.max_in_flight,
        show_progress=not args.no_progress,
    )
    print(summary.describe())
    return 0


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from llm_worker.bench import throughput_main

    engine, _ = _engine(args)
    throughput_main(engine, args)
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from llm_worker.bench import percentiles, run_latency

    engine, settings = _engine(args)
    times = run_latency(
        engine,
        args.batch_size,
        args.input_len,
        args.output_len,
        args.num_iters,
        args.num_iters_warmup,
        settings.seed,
    )
    figures = percentiles(times)
    print("Latency (s per batch): " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from llm_worker.schemas import SamplingParams

    engine, settings = _engine(args)
    if engine.tokenizer is None:
        raise CliError(
            f"--model {settings.model} has no tokenizer to encode text prompts (random weights "
            "for a named shape); use the bundled model or an HF folder"
        )
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    for out in engine.generate(args.prompts, params):
        print(out.text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-worker", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run-batch", help="run an OpenAI batch JSONL file through the engine")
    p.add_argument("-i", "--input", type=Path, required=True, help="OpenAI batch JSONL")
    p.add_argument("-o", "--output", type=Path, required=True, help="results JSONL")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="jobs held at once (default: 2 x max-num-seqs)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--allow-duplicate-ids",
        action="store_true",
        help="run a file whose custom_ids repeat (refused by default, as OpenAI's batch API "
        "does); also skips the check's read, so the input may be a pipe",
    )
    add_settings_arguments(p, EngineSettings)
    p.set_defaults(func=cmd_run_batch)

    p = sub.add_parser("generate", help="complete a few prompts and print the text")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--max-tokens", type=int, default=64, help="(default: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="(default: 0)")
    add_settings_arguments(p, EngineSettings)
    p.set_defaults(func=cmd_generate)

    bench = sub.add_parser("bench", help="offline benchmarks").add_subparsers(
        dest="bench", required=True
    )
    p = bench.add_parser("throughput", help="requests/s and tokens/s on a synthetic dataset")
    from llm_worker.bench import add_throughput_arguments

    add_throughput_arguments(p)
    add_settings_arguments(p, EngineSettings)
    p.set_defaults(func=cmd_bench_throughput)

    p = bench.add_parser("latency", help="seconds per batch: mean, p50, p90, p99")
    for flag, default in (
        ("--batch-size", 8),
        ("--input-len", 32),
        ("--output-len", 128),
        ("--num-iters", 10),
        ("--num-iters-warmup", 2),
    ):
        p.add_argument(flag, type=int, default=default, help=f"(default: {default})")
    add_settings_arguments(p, EngineSettings)
    p.set_defaults(func=cmd_bench_latency)
    from llm_worker.cli_queue import add_queue_commands

    add_queue_commands(sub, lambda parser: add_settings_arguments(parser, EngineSettings))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 1 when some of the work failed (the command says which), 2 when the
    command could not go on (one line on stderr)."""
    from llm_worker.engine.config import EngineConfigError
    from llm_worker.extras import MissingExtra
    from llm_worker.queues.errors import QueueError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    # QueueError: credentials, certificates; EngineConfigError: a model or settings refused
    except (CliError, QueueError, MissingExtra, EngineConfigError) as exc:
        command = " ".join(filter(None, (args.command, getattr(args, "bench", None))))
        print(f"llm-worker {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        gc.unfreeze()  # what _engine froze is collectable again (main() called in-process)


if __name__ == "__main__":
    sys.exit(main())
