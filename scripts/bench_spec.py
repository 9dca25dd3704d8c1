#!/usr/bin/env python
"""Speculative decoding (issue 6): what n-gram and draft-model speculation buy, in one run.

(a) Batch 1, input copying: the model repeats a passage of bench_spec_passages.json (asked through
    its chat template), each alone; decode tokens/s without speculation and with n-gram.
(b) The same with drafts: the target's first N layers (--draft-layers), and a dummy pair
    (--dummy-target with --dummy-draft, and with its first --dummy-draft-layers) on random prompts;
    then that target with its later layers damped (--agreeing-scale) so its first layers agree
    with it: what a draft model buys when it is right, on the target's real shape.
(c) --batch-prompts requests (4x --batch-size by default), at most --batch-size at once,
    --batch-output-len tokens each: output tokens/s without speculation and with n-gram,
    adaptive on, and their ratio; on copy and on random prompts.
    With a named shape as --model (dummy weights, no tokenizer), random prompts only: e.g.
    `--parts c --model tiny-llama --async-scheduling on` puts the host in charge on a CPU, as
    it is on a GPU with a small model and a large batch.

(a) and (b) run with the adaptive controller off. Every configuration gets its own engine, warmed
up on other prompts; acceptance is engine.stats().spec over the timed part; greedy outputs are
compared with the plain run's. --quick shrinks everything to a CPU functional check.
"""

import argparse
import copy
import dataclasses
import datetime
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_worker.bench import random_prompts, release_gpu_memory
from llm_worker.config import EngineSettings
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.engine.speculative import SpecStats
from llm_worker.jobs import chat_prompt_ids
from llm_worker.models.config import NAMED_SHAPES, ModelConfig
from llm_worker.models.loader import resolve
from llm_worker.schemas import SamplingParams

PASSAGES = Path(__file__).with_name("bench_spec_passages.json")
INSTRUCTION = "Repeat the following passage exactly, word for word, with no commentary.\n\n"
QUICK = {
    "passage_words": 40, "max_output_len": 48, "draft_layers": "15",
    "dummy_target": "tiny-llama", "dummy_draft": "tiny-llama", "dummy_draft_layers": 1,
    "dummy_input_len": 32, "dummy_output_len": 32, "batch_size": 8, "batch_output_len": 32,
}  # fmt: skip

ENGINE_ARGS = ("dtype", "device", "max_model_len", "kv_cache_memory_gb", "num_speculative_tokens",
               "prompt_lookup_min", "prompt_lookup_max", "async_scheduling")  # fmt: skip

# (engine, prompts) -> (output tokens, output tokens/s, each prompt's output token ids)
Run = Callable[[LLMEngine, list[list[int]]], tuple[int, float, list[list[int]]]]


@dataclass
class Figures:
    config: str
    num_output_tokens: int
    output_tokens_per_s: float  # batch 1: first token to finish; batched: submit to last finish
    speedup: float = 1.0  # over the plain run of the same part
    identical_to_plain: bool | None = None  # greedy token ids equal the plain run's
    acceptance_rate: float | None = None  # draft tokens kept / draft tokens proposed
    tokens_per_draft: float | None = None  # tokens a verified sequence emits per step
    acceptance_by_position: list[float] = field(default_factory=list)  # [k]: kept at j / drafts
    speculating_step_share: float | None = None  # pure decode steps that speculated
    rates: list[float] = field(default_factory=list)  # output tokens/s of each timed repeat
    # Adaptive runs: per batch bucket, the controller's learned output tokens/s with and
    # without speculation and how many steps taught each, at the end of the timed part.
    controller: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    warmup: list[list[int]]  # run first on every engine, untimed
    prompts: list[list[int]]
    run: Run
    warmup_run: Run | None = None  # None: `run`
    prepare: Callable[[LLMEngine], None] | None = None  # applied to each engine before warm-up


def one_by_one(max_tokens: int, ignore_eos: bool) -> Run:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=ignore_eos)

    def run(engine: LLMEngine, prompts: list[list[int]]) -> tuple[int, float, list[list[int]]]:
        outputs, decode_s = [], 0.0
        for prompt in prompts:
            [out] = engine.generate([prompt], params)
            assert out.metrics.finished_time and out.metrics.first_token_time
            decode_s += out.metrics.finished_time - out.metrics.first_token_time
            outputs.append(out.output_token_ids)
        num_output = sum(len(o) for o in outputs)
        # Each first token comes out of the prefill, not a decode step.
        return num_output, (num_output - len(prompts)) / max(decode_s, 1e-9), outputs

    return run


def all_at_once(max_tokens: int) -> Run:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)

    def run(engine: LLMEngine, prompts: list[list[int]]) -> tuple[int, float, list[list[int]]]:
        start = time.perf_counter()
        outputs = [out.output_token_ids for out in engine.generate(prompts, params)]
        elapsed = time.perf_counter() - start
        num_output = sum(len(o) for o in outputs)
        return num_output, num_output / elapsed, outputs

    return run


def spec_delta(after: SpecStats | None, before: SpecStats | None) -> SpecStats | None:
    if after is None or before is None:
        return None
    counts = [f.name for f in dataclasses.fields(SpecStats) if f.name != "accepted_by_position"]
    delta = {name: getattr(after, name) - getattr(before, name) for name in counts}
    by_position = zip(after.accepted_by_position, before.accepted_by_position, strict=True)
    return SpecStats(**delta, accepted_by_position=[a - b for a, b in by_position])


def with_spec(fig: Figures, spec: SpecStats | None) -> Figures:
    if spec is None:
        return fig
    fig.acceptance_rate = spec.acceptance_rate
    fig.tokens_per_draft = spec.mean_tokens_per_draft
    fig.acceptance_by_position = [n / max(spec.num_drafts, 1) for n in spec.accepted_by_position]
    steps = spec.num_steps_speculating + spec.num_steps_plain
    fig.speculating_step_share = spec.num_steps_speculating / steps if steps else 0.0
    return fig


def controller_rates(engine: LLMEngine) -> dict[str, dict[str, float]]:
    spec = engine.speculator
    if spec is None or not spec.controller.adaptive:
        return {}
    return {
        str(bucket): {"spec_tok_s": r[True][0], "plain_tok_s": r[False][0],
                      "spec_steps": r[True][1], "plain_steps": r[False][1]}
        for bucket, r in spec.controller.learned().items()
    }  # fmt: skip


def measure(
    name: str, settings: EngineSettings, work: Workload, repeats: int = 1
) -> tuple[Figures, list[list[int]]]:
    """The timed run `repeats` times on one engine: the median rate, the first run's outputs
    (every repeat must give the same), acceptance over all of them."""
    engine = LLMEngine.from_settings(settings)
    if work.prepare is not None:
        work.prepare(engine)
    (work.warmup_run or work.run)(engine, work.warmup)
    before = copy.deepcopy(engine.stats().spec)
    runs = [work.run(engine, work.prompts) for _ in range(repeats)]
    num_output, _, outputs = runs[0]
    rates = [rate for _, rate, _ in runs]
    figures = Figures(name, num_output, statistics.median(rates), rates=rates)
    figures = with_spec(figures, spec_delta(engine.stats().spec, before))
    figures.controller = controller_rates(engine)
    if any(out != outputs for _, _, out in runs[1:]):
        print(f"  note: {name}: the repeats' outputs differ", flush=True)
    del engine
    release_gpu_memory()
    return figures, outputs


def row(f: Figures) -> str:
    def opt(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    same = "-" if f.identical_to_plain is None else ("yes" if f.identical_to_plain else "NO")
    by_pos = " ".join(f"{x:.2f}" for x in f.acceptance_by_position) or "-"
    return (
        f"{f.config:<28} {f.num_output_tokens:>7} {f.output_tokens_per_s:>9.1f} "
        f"{f.speedup:>6.2f}x {opt(f.acceptance_rate):>6} {opt(f.tokens_per_draft):>6} "
        f"{opt(f.speculating_step_share, '.0%'):>6} {same:>5}  {by_pos}"
    )


def part(
    title: str, configs: list[tuple[str, EngineSettings]], work: Workload, repeats: int = 1
) -> list[Figures]:
    """Measure each configuration; the first runs without speculation and is the baseline."""
    print(f"\n{title}", flush=True)
    print(f"{'config':<28} {'out tok':>7} {'tok/s':>9} {'vs plain':>7} {'accept':>6} "
          f"{'tok/dr':>6} {'spec%':>6} {'same':>5}  accepted at position j / drafts")  # fmt: skip
    results: list[Figures] = []
    plain: list[list[int]] = []
    for name, settings in configs:
        fig, outputs = measure(name, settings, work, repeats)
        if results:
            fig.speedup = fig.output_tokens_per_s / results[0].output_tokens_per_s
            fig.identical_to_plain = outputs == plain
        else:
            plain = outputs
        results.append(fig)
        print(row(fig), flush=True)
        if len(fig.rates) > 1:
            print(f"  {name}: tok/s of each repeat " + ", ".join(f"{r:.1f}" for r in fig.rates))
        for bucket, c in fig.controller.items():
            print(f"  {name}: controller at batch bucket {bucket}: with speculation "
                  f"{c['spec_tok_s']:.1f} tok/s ({c['spec_steps']:.0f} steps), without "
                  f"{c['plain_tok_s']:.1f} tok/s ({c['plain_steps']:.0f} steps)")  # fmt: skip
    return results


def rotated(text: str, shift: int) -> str:
    words = text.split(" ")
    shift %= len(words)
    return " ".join(words[shift:] + words[:shift])


def copy_prompts(tokenizer: Any, texts: list[str], count: int, shift: int) -> list[list[int]]:
    """Prompt i repeats passage i % len(texts), rotated by a word shift so no two are alike."""
    prompts = []
    for i in range(count):
        text = rotated(texts[i % len(texts)], shift * (i // len(texts)))
        prompts.append(
            chat_prompt_ids(tokenizer, [{"role": "user", "content": INSTRUCTION + text}])
        )
    return prompts


def engine_settings(args: argparse.Namespace, model: str, **knobs: Any) -> EngineSettings:
    common = {name: getattr(args, name) for name in ENGINE_ARGS}
    if model in NAMED_SHAPES:  # random weights
        knobs.setdefault("load_format", "dummy")
    return EngineSettings(model=model, **common, **knobs)


def copy_parts(args: argparse.Namespace, tokenizer: Any, texts: list[str]) -> list[Figures]:
    """(a) plain vs n-gram and (b) truncated drafts, batch 1 on copy prompts."""
    fixed = {"max_num_seqs": 8, "speculative_adaptive": False}
    configs = [("plain", engine_settings(args, args.model, max_num_seqs=8))]
    if "a" in args.parts:
        configs.append(
            ("ngram", engine_settings(args, args.model, **fixed, speculative_method="ngram"))
        )
    for n in [int(n) for n in args.draft_layers.split(",") if n] if "b" in args.parts else []:
        knobs = {**fixed, "speculative_method": "draft", "speculative_draft_layers": n}
        configs.append((f"draft: first {n} layers", engine_settings(args, args.model, **knobs)))
    half = len(texts[0].split(" ")) // 2
    work = Workload(
        warmup=copy_prompts(tokenizer, [rotated(texts[0], half)], 1, 0),
        prompts=copy_prompts(tokenizer, texts, len(texts), 0),
        run=one_by_one(args.max_output_len, ignore_eos=False),
    )
    title = f"(a/b) batch 1, copy a passage, {args.model}, greedy, k={args.num_speculative_tokens}"
    return part(title, configs, work)


def dummy_part(args: argparse.Namespace) -> list[Figures]:
    """(b) a dummy target with a separate dummy draft and with its own first layers."""
    dummy = {"max_num_seqs": 8, "speculative_adaptive": False, "load_format": "dummy"}
    draft = {**dummy, "speculative_method": "draft"}
    target = args.dummy_target
    configs = [
        ("plain", engine_settings(args, target, **dummy)),
        (f"draft: {args.dummy_draft}",
         engine_settings(args, target, **draft, speculative_model=args.dummy_draft)),
        (f"draft: first {args.dummy_draft_layers} layers",
         engine_settings(args, target, **draft, speculative_draft_layers=args.dummy_draft_layers)),
    ]  # fmt: skip
    vocab = ModelConfig.from_hf(resolve(target, Path()).hf_config).vocab_size
    prompts = random_prompts(3, args.dummy_input_len, vocab, 0)
    work = Workload(prompts[:1], prompts[1:], one_by_one(args.dummy_output_len, ignore_eos=True))
    figures = part(f"(b) batch 1, dummy {target}, random prompts, EOS ignored", configs, work)
    if args.agreeing_scale <= 0:
        return figures
    # A draft that agrees with its target, which random weights never give: the same dummy
    # target with every layer past the draft's writing its residual update scaled by
    # --agreeing-scale, so those layers barely move the hidden state and the first N layers
    # predict what all of them do. An upper bound on what a good draft buys, not a real pair.
    n = args.dummy_draft_layers
    agreeing = [configs[0], configs[2]]
    work = dataclasses.replace(work, prepare=lambda e: damp_layers(e, n, args.agreeing_scale))
    title = (f"(b) batch 1, dummy {target} with layers {n}.. damped x{args.agreeing_scale} "
             "(a draft that agrees), random prompts, EOS ignored")  # fmt: skip
    return figures + part(title, agreeing, work)


@torch.inference_mode()
def damp_layers(engine: LLMEngine, first: int, scale: float) -> None:
    """Scale what layers `first`.. add to the residual stream (attention and MLP outputs)."""
    for layer in engine.runner.model.model.layers[first:]:
        layer.self_attn.o_proj.weight.mul_(scale)  # type: ignore[union-attr,operator]
        layer.mlp.down_proj.weight.mul_(scale)  # type: ignore[union-attr,operator]


def batch_parts(
    args: argparse.Namespace, tokenizer: Any | None, texts: list[str]
) -> dict[str, list[Figures]]:
    """(c) many requests at once: plain vs n-gram with the adaptive controller on."""
    n = args.batch_size
    configs = [
        ("plain", engine_settings(args, args.model, max_num_seqs=n)),
        ("ngram, adaptive", engine_settings(
            args, args.model, max_num_seqs=n, speculative_method="ngram")),
    ]  # fmt: skip
    m = args.batch_prompts or 4 * n  # more than fit at once: the batch stays full until the end
    workloads = []
    if tokenizer is None:  # a named shape: its vocabulary, the copy prompts' usual length
        vocab = ModelConfig.from_hf(resolve(args.model, Path()).hf_config).vocab_size
        workloads.append(("random", random_prompts(m + n, args.random_input_len, vocab, 1)))
    else:
        copies = copy_prompts(tokenizer, texts, m + n, 7)
        mean_len = sum(len(p) for p in copies) // len(copies)
        workloads.append(("copy", copies))
        workloads.append(("random", random_prompts(m + n, mean_len, len(tokenizer), 1)))
    out = {}
    for workload, prompts in workloads:
        work = Workload(
            warmup=prompts[m:],
            prompts=prompts[:m],
            run=all_at_once(args.batch_output_len),
            warmup_run=all_at_once(min(16, args.batch_output_len)),
        )
        title = (f"(c) batch {n}: {m} {workload} prompts, at most {n} at once, "
                 f"{args.batch_output_len} tokens each")  # fmt: skip
        figures = part(title, configs, work, args.batch_repeats)
        print(f"ngram adaptive / plain output tokens/s: {figures[1].speedup:.3f}", flush=True)
        out[workload] = figures
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="target of (a), (b) truncated and (c)")
    p.add_argument("--parts", default="abc", help="which of a, b, c to run (default: abc)")
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-memory-gb", type=float, default=None, help="default: profiled")
    p.add_argument("--num-speculative-tokens", type=int, default=4, help="k")
    p.add_argument("--prompt-lookup-min", type=int, default=2)
    p.add_argument("--prompt-lookup-max", type=int, default=5)
    p.add_argument("--passage-words", type=int, default=None, help="cut passages to this")
    p.add_argument("--max-output-len", type=int, default=512, help="(a)/(b) copy; stops at EOS")
    p.add_argument("--draft-layers", default="8,16,24", help="(b) truncated drafts of --model")
    p.add_argument("--dummy-target", default="qwen3-8b", help="(b) named shape, dummy weights")
    p.add_argument("--dummy-draft", default="qwen3-0.6b", help="(b) same vocabulary as target")
    p.add_argument("--dummy-draft-layers", type=int, default=4)
    p.add_argument("--dummy-input-len", type=int, default=256)
    p.add_argument("--dummy-output-len", type=int, default=256)
    p.add_argument("--agreeing-scale", type=float, default=1e-3,
                   help="(b) also a target whose layers past the draft's are damped by this "
                        "(a draft that agrees); 0: skip")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="(c) requests at once")
    p.add_argument("--batch-output-len", type=int, default=256)
    p.add_argument(
        "--batch-prompts",
        type=int,
        default=None,
        help="(c) requests in all, at most --batch-size at once (default 4x, so the "
        "batch stays full; equal to --batch-size: one closed batch, whose "
        "speculating sequences finish unevenly and leave a tail of small steps)",
    )
    p.add_argument("--random-input-len", type=int, default=100,
                   help="(c) prompt length for a named-shape --model (no tokenizer)")  # fmt: skip
    p.add_argument(
        "--async-scheduling",
        type=lambda v: {"on": True, "off": False}.get(v),
        default=None,
        metavar="on|off",
        help="default: on with CUDA, off on CPU",
    )
    p.add_argument("--batch-repeats", type=int, default=3,
                   help="(c) timed runs per configuration on one engine; median shown")  # fmt: skip
    p.add_argument("--json-out", type=Path, default=None, help="write every figure here")
    p.add_argument("--quick", action="store_true",
                   help=f"CPU functional check; defaults become {QUICK}")  # fmt: skip
    known, _ = p.parse_known_args(argv)
    if known.quick:
        p.set_defaults(**QUICK)  # flags given explicitly still win
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    from transformers import AutoTokenizer

    folder = resolve(args.model, EngineSettings().cache_dir).folder
    tokenizer = None if folder is None else AutoTokenizer.from_pretrained(folder)
    if tokenizer is None and args.parts != "c":
        raise SystemExit(f"--model {args.model} has no tokenizer: only --parts c runs on it")
    texts = [p["text"] for p in json.loads(PASSAGES.read_text())]
    if args.passage_words:
        texts = [" ".join(t.split(" ")[: args.passage_words]) for t in texts]
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    figures: dict[str, Any] = {}
    if "a" in args.parts or "b" in args.parts:
        figures["batch1_copy"] = copy_parts(args, tokenizer, texts)
    if "b" in args.parts:
        figures["dummy_pair"] = dummy_part(args)
    if "c" in args.parts:
        figures["batch"] = batch_parts(args, tokenizer, texts)
    if args.json_out:
        report = {
            "device": device,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "figures": json.loads(json.dumps(figures, default=dataclasses.asdict)),
        }
        args.json_out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
