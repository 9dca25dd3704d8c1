#!/usr/bin/env python
"""Where FP8's quality cost comes from, measured apart from the engine: HF transformers runs the
dense checkpoint in fp32 with every decoder projection's weight and/or input fake-quantized to
e4m3 the way `--quantization fp8` does it (one absmax scale per output channel, one per token).

Perplexity over the text scripts/perplexity.py scores, for fp32, fp8 weights only, fp8
activations only and both (W8A8); W8A8 again with the embeddings nudged by 1e-6 (relative,
--noise-seeds): activation rounding is discontinuous, so any two correct implementations of
W8A8 (this one and the engine's) round different elements and land a little apart; the nudged
runs show how far (and how much the logits move: W8A8 amplifies the nudge, the continuous
variants do not). Then, per projection, the relative error of its output on the text's first
--layer-tokens tokens: the weight's own rounding error, FP8 weights, FP8 inputs, both, and
int8 per-channel weights for comparison.

  python scripts/quantize_error.py
"""

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_worker.config import EngineSettings
from llm_worker.kernels import reference
from llm_worker.models.loader import resolve

TEXT = Path(__file__).resolve().parents[1] / "docs" / "data" / "pride_and_prejudice_ch1-3.txt"


def fake_fp8(x: torch.Tensor) -> torch.Tensor:
    """Rows of x rounded to e4m3 with one absmax scale each, back in fp32."""
    quantized = reference.quantize_fp8(x)
    return quantized.data.float() * quantized.scale


def int8_rows(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().amax(-1, keepdim=True) / 127
    return (w / scale).round().clamp(-127, 127) * scale


class FakeFp8Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear, weights: bool, inputs: bool) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.weight = fake_fp8(w) if weights else w  # [N, K]
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        rows = fake_fp8(rows) if self.inputs else rows
        return (rows @ self.weight.T).reshape(*x.shape[:-1], -1)


def projections(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(parent, attribute) of each decoder projection; the head and embeddings are left out."""
    return [
        (parent, name)
        for layer in model.model.layers
        for parent in (layer.self_attn, layer.mlp)
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.Linear)
    ]


def load(folder: Path, weights: bool = False, inputs: bool = False) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if weights or inputs:
        for parent, name in projections(model):
            setattr(parent, name, FakeFp8Linear(getattr(parent, name), weights, inputs))
    return model


@torch.inference_mode()
def logits(model: torch.nn.Module, ids: list[int], nudge_seed: int | None) -> torch.Tensor:
    """[len(ids), vocab]; nudge_seed: the embeddings times (1 + 1e-6 * N(0, 1)) first."""
    embeds = model.get_input_embeddings()(torch.tensor([ids]))
    if nudge_seed is not None:
        noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(nudge_seed))
        embeds = embeds * (1 + 1e-6 * noise)
    return model(inputs_embeds=embeds).logits[0]


def perplexity(model: torch.nn.Module, ids: list[int], nudge_seed: int | None = None) -> float:
    nll = torch.nn.functional.cross_entropy(
        logits(model, ids, nudge_seed)[:-1], torch.tensor(ids[1:])
    )
    return math.exp(nll.item())


def nudge_sensitivity(model: torch.nn.Module, ids: list[int]) -> float:
    """Relative change of the logits when the embeddings move by 1e-6."""
    base, nudged = logits(model, ids, None), logits(model, ids, 1)
    return ((nudged - base).norm() / base.norm()).item()


@torch.inference_mode()
def layer_errors(model: torch.nn.Module, ids: list[int]) -> dict[str, list[dict[str, float]]]:
    """Per projection kind (q_proj, ...): per layer, relative output errors on its real inputs."""
    errors: dict[str, list[dict[str, float]]] = {}

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    def hook(kind: str) -> Callable[..., None]:
        def record(module: torch.nn.Linear, args: tuple[torch.Tensor], _out: object) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            w = module.weight.float()
            wq, xq, y = fake_fp8(w), fake_fp8(x), x @ w.T
            errors.setdefault(kind, []).append({
                "weight": rel(wq, w), "fp8 W": rel(x @ wq.T, y), "fp8 A": rel(xq @ w.T, y),
                "fp8 W8A8": rel(xq @ wq.T, y), "int8 W": rel(x @ int8_rows(w).T, y),
            })  # fmt: skip

        return record

    for parent, name in projections(model):
        getattr(parent, name).register_forward_hook(hook(name))
    model(torch.tensor([ids]))
    return errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a dense checkpoint: 'smollm2' or a folder")
    p.add_argument("--noise-seeds", type=int, default=4, help="nudged W8A8 runs")
    p.add_argument("--layer-tokens", type=int, default=1024)
    args = p.parse_args()
    source = resolve(args.model, EngineSettings().cache_dir)
    assert source.folder is not None, "a dense checkpoint folder"
    ids = AutoTokenizer.from_pretrained(source.folder).encode(TEXT.read_text())
    print(f"{args.model}, {len(ids)} tokens of {TEXT.name}, HF transformers fp32, CPU")
    print("| e4m3 fake-quantized | perplexity | vs fp32 |\n|---|---|---|")
    variants = [("nothing (fp32)", False, False), ("weights", True, False),
                ("activations", False, True), ("weights and activations", True, True)]  # fmt: skip
    reference_ppl = 0.0
    sensitivity = {}
    for label, weights, inputs in variants:
        model = load(source.folder, weights, inputs)
        sensitivity[label] = nudge_sensitivity(model, ids[: args.layer_tokens])
        seeds = [None] + (list(range(1, args.noise_seeds + 1)) if weights and inputs else [])
        for seed in seeds:
            ppl = perplexity(model, ids, seed)
            reference_ppl = reference_ppl or ppl
            name = label + (f", embeddings nudged (seed {seed})" if seed else "")
            print(f"| {name} | {ppl:.4f} | {ppl / reference_ppl - 1:+.2%} |", flush=True)
    changes = ", ".join(f"{label} {change:.1e}" for label, change in sensitivity.items())
    print(f"\nrelative change of the logits ({args.layer_tokens} tokens) when the embeddings move "
          f"by 1e-6: {changes}")  # fmt: skip
    errors = layer_errors(load(source.folder), ids[: args.layer_tokens])
    columns = list(next(iter(errors.values()))[0])
    print(f"\nrelative error of each projection's output, {args.layer_tokens} tokens: mean (max) "
          "over layers")  # fmt: skip
    print(f"| projection | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for kind, rows in errors.items():
        cells = [f"{sum(r[c] for r in rows) / len(rows):.2%} ({max(r[c] for r in rows):.2%})"
                 for c in columns]  # fmt: skip
        print(f"| {kind} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
