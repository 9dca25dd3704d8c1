#!/usr/bin/env python
"""Quality of quantized models: perplexity over a fixed text and greedy agreement with an fp32
reference on the example prompts, one row per engine configuration.

Perplexity: the text (docs/data/pride_and_prejudice_ch1-3.txt, 4,089 SmolLM2 tokens) runs as
one sequence through the engine's model runner in chunks over its paged KV cache, so every token
is scored with the whole text before it; the mean negative log-likelihood of each next token.
Greedy agreement: examples/prompts.jsonl (chat ones through the chat template), decoded greedily
by each configuration; a prompt agrees when its tokens are the fp32 reference's.

Configurations (--configs): fp32 (the reference), bf16, fp8 (a compressed-tensors FP8_DYNAMIC
checkpoint written by scripts/quantize_rtn.py: per-channel e4m3 weights, per-token activations),
int4 (RTN, AWQ layout, --group-size), fp8-at-load (--quantization fp8 on the dense checkpoint:
the same weights as fp8, where the engine builder passes the setting). --engine-arg K=V sets an
engine setting on every configuration but fp32, so columns such as an FP8 KV cache are one flag:

  python scripts/perplexity.py                                   # the table, CPU or GPU
  python scripts/perplexity.py --configs bf16,fp8 --engine-arg kv_cache_dtype=fp8 --label "fp8 KV"
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from quantize_rtn import quantize_folder

from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.engine.scheduler import ScheduledSequence
from llm_worker.engine.sequence import Sequence, SequenceMetrics
from llm_worker.jobs import batch_file_prompt_ids
from llm_worker.models.loader import resolve
from llm_worker.schemas import SamplingParams

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "docs" / "data" / "pride_and_prejudice_ch1-3.txt"
PROMPTS = REPO / "examples" / "prompts.jsonl"
CONFIGS = ("fp32", "bf16", "fp8", "int4", "fp8-at-load")


def config_settings(name: str, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "max_model_len": args.max_model_len,
        "enable_prefix_caching": False,
        "enforce_eager": True,  # the text's chunks want every position's logits: eager steps
    }
    if name == "fp32":
        return {**base, "dtype": "float32"}
    settings = {**base, "dtype": args.dtype, **dict(args.engine_arg)}
    if name == "fp8":
        settings["model"] = str(quantized(args.model, "fp8", args.group_size, work_dir))
    elif name == "int4":
        settings["model"] = str(quantized(args.model, "awq", args.group_size, work_dir))
    elif name == "fp8-at-load":
        settings["quantization"] = "fp8"
    return settings


def quantized(model: str, fmt: str, group_size: int, work_dir: Path) -> Path:
    out = work_dir / (f"{Path(model).name}-{fmt}" + (f"-g{group_size}" if fmt == "awq" else ""))
    if not (out / "config.json").exists():
        source = resolve(model, EngineSettings().cache_dir)
        assert source.folder is not None, "a dense checkpoint folder"
        quantize_folder(source.folder, out, fmt, group_size)
    return out


@torch.inference_mode()
def text_nll(engine: LLMEngine, ids: list[int], chunk: int) -> list[float]:
    """-log p(ids[i + 1] | ids[: i + 1]) for each i, the text as one sequence in chunks."""
    runner = engine.runner
    num_blocks = -(-len(ids) // runner.block_size)
    if num_blocks > runner.num_blocks:
        raise SystemExit(
            f"the KV cache holds {runner.num_blocks} blocks, the text needs {num_blocks}"
        )
    seq = Sequence("text", list(ids), len(ids), SamplingParams(), SequenceMetrics(0.0))
    seq.block_table = list(range(num_blocks))
    nll: list[float] = []
    for start in range(0, len(ids) - 1, chunk):
        size = min(chunk, len(ids) - start)
        step = ScheduledSequence(seq, num_new_tokens=size, start=start, logits_rows=size)
        logits = runner.logits([step])  # [size, vocab] fp32, positions start .. start + size
        targets = torch.tensor(ids[start + 1 : start + size + 1], device=logits.device)
        logprobs = torch.log_softmax(logits[: len(targets)], dim=-1)
        nll += (-logprobs.gather(1, targets[:, None])[:, 0]).tolist()
    return nll


def measure(settings: dict[str, Any], text: str, args: argparse.Namespace) -> dict[str, Any]:
    began = time.monotonic()
    engine = LLMEngine.from_settings(EngineSettings(**settings))
    if settings.get("quantization") and engine.runner.model.quant is None:
        raise SystemExit(
            "--quantization did not reach the model: this tree's engine builder does not pass "
            "it to load_model(quantization=...)"
        )
    ids = engine.tokenizer.encode(text)[: args.max_text_tokens]
    nll = text_nll(engine, ids, args.chunk)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    prompts = batch_file_prompt_ids(engine.tokenizer, PROMPTS)
    outputs = engine.generate(prompts[: args.num_prompts], params)
    return {
        "perplexity": math.exp(sum(nll) / len(nll)),
        "num_tokens": len(nll),
        "greedy": [o.output_token_ids for o in outputs],
        "seconds": time.monotonic() - began,
    }


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> tuple[int, float]:
    """(prompts whose tokens equal the reference's, mean share of reference tokens matched
    before the first difference)."""
    same, shares = 0, []
    for got, want in zip(tokens, reference, strict=True):
        same += got == want
        differ = [i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b]
        prefix = differ[0] if differ else min(len(got), len(want))
        shares.append(prefix / max(len(want), 1))
    return same, sum(shares) / len(shares)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a dense checkpoint: 'smollm2' or a folder")
    p.add_argument(
        "--configs",
        default="fp32,bf16,fp8,int4",
        help=f"comma-separated, of {', '.join(CONFIGS)}; fp32 is always run",
    )
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=lambda kv: tuple(kv.split("=", 1)),
        help="an engine setting for every configuration but fp32 (repeatable)",
    )
    p.add_argument("--label", default="", help="appended to each row's name (with --engine-arg)")
    p.add_argument("--dtype", default="bfloat16", help="activations of every row but fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--group-size", type=int, default=64, help="int4 (SmolLM2's 576 needs 64)")
    p.add_argument("--chunk", type=int, default=512, help="text tokens per forward pass")
    p.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--max-text-tokens", type=int, default=None, help="score a prefix of the text")
    p.add_argument("--num-prompts", type=int, default=None, help="the first N example prompts")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument(
        "--work-dir", type=Path, default=Path.home() / ".cache" / "llm-worker" / "quantized"
    )
    p.add_argument("--output-json", type=Path, default=None)
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="an earlier --output-json whose fp32 row to reuse (same text, prompts, --max-tokens)",
    )
    args = p.parse_args()
    names = ["fp32"] + [c for c in args.configs.split(",") if c and c != "fp32"]
    if unknown := set(names) - set(CONFIGS):
        p.error(f"unknown --configs {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    text = TEXT.read_text()
    rows: dict[str, dict[str, Any]] = {}
    if args.reference:
        rows["fp32"] = json.loads(args.reference.read_text())["rows"]["fp32"]
    for name in names:  # a row as soon as it is measured: a CPU run takes a while
        if name not in rows:
            rows[name] = measure(config_settings(name, args, args.work_dir), text, args)
        if name == "fp32":
            print_header(rows["fp32"], args)
        print_row(name, rows, args)
        if args.output_json:
            figures = {"model": args.model, "device": args.device, "engine_arg": args.engine_arg}
            args.output_json.write_text(json.dumps({**figures, "rows": rows}, indent=1))


def print_header(reference: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"{args.model}, {reference['num_tokens']} tokens of {TEXT.name}, {args.device}; greedy: "
        f"{len(reference['greedy'])} prompts x {args.max_tokens} tokens against fp32"
    )
    print("| config | perplexity | vs fp32 | vs bf16 | greedy = fp32 | agreeing prefix | s |")
    print("|---|---|---|---|---|---|---|", flush=True)


def print_row(name: str, rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    reference, row = rows["fp32"], rows[name]
    same, share = agreement(row["greedy"], reference["greedy"])
    label = f"{name} {args.label}".strip() if name != "fp32" else name
    ppl, bf16 = row["perplexity"], rows.get("bf16", reference)["perplexity"]
    print(
        f"| {label} | {ppl:.4f} | {ppl / reference['perplexity'] - 1:+.2%} "
        f"| {ppl / bf16 - 1:+.2%} | {same}/{len(row['greedy'])} | {share:.1%} "
        f"| {row['seconds']:.0f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
