"""Time the fused elementwise kernels against the unfused torch references they replace.

Shapes are Llama-3-8B's (hidden 4096, 32 query / 8 KV heads of 128, intermediate 14336, bf16):
residual add + RMSNorm over [T, 4096]; rotary of q [T, 32, 128] and k [T, 8, 128], strided views
of one qkv output as the model has them; SiLU*mul of [T, 2 * 14336]. Each op is timed two ways
with triton.testing.do_bench (medians):

- graph: a CUDA graph of --repeat back-to-back calls, replayed, divided by --repeat: GPU time
  alone, as decode runs it (replayed from graphs), without one replay's launch cost per call.
- eager: plain calls, as prefill runs them: the longer of GPU time and host launch time.

The `layer` rows add two norms, rotary and SiLU*mul; `step` is that times the layer count plus
the final norm, to set against the 2.9 ms of a 13.9 ms step (batch 256) and 1.8 ms of about
7 ms (batch 1) that a profile put on unfused elementwise work (issue 5). `max_err` is the
largest difference from the torch result on the same inputs (on CUDA in bf16: 0, or one bf16
step where the norm's sum order flips a rounding; the CPU interpreter truncates bf16, so more).

    python scripts/bench_fused_ops.py                          # CUDA: the table
    python scripts/bench_fused_ops.py --tokens 1,256 --json fused.json
    python scripts/bench_fused_ops.py --device cpu             # smoke run: interpreter, tiny shapes
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPS = 1e-5
Fn = Callable[[], object]


@dataclass(frozen=True)
class Shapes:
    hidden: int = 4096
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 14336
    num_layers: int = 32


CPU_SHAPES = Shapes(hidden=256, num_heads=4, num_kv_heads=2, head_dim=64, intermediate=512,
                    num_layers=2)  # fmt: skip


def make_ops(shapes: Shapes, num_tokens: int, dtype: torch.dtype, device: str) -> dict:
    """op name -> (fused call, torch call, error of fused against torch on fresh inputs)."""
    from llm_worker.kernels import reference, rms_norm, rotary, silu_mul
    from llm_worker.models.layers import rotary_cos_sin_cache

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device).to(dtype)

    s, t = shapes, num_tokens
    x, residual, weight = randn(t, s.hidden), randn(t, s.hidden), randn(s.hidden)
    q_size, kv_size = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    q, k, _ = randn(t, q_size + 2 * kv_size).split([q_size, kv_size, kv_size], dim=-1)
    q, k = q.view(t, s.num_heads, s.head_dim), k.view(t, s.num_kv_heads, s.head_dim)
    cache = rotary_cos_sin_cache(s.head_dim, 8192, 500000.0, None, torch.device(device))
    positions = torch.randint(0, 8192, (t,), device=device)
    gate_up = randn(t, 2 * s.intermediate)

    def err(got: torch.Tensor, want: torch.Tensor) -> float:
        return float((got.float() - want.float()).abs().max()) if got.numel() else 0.0

    def norm_err() -> float:  # before the timed calls: they add x into the residual each time
        return err(rms_norm.rms_norm(x, weight, EPS, residual.clone())[0],
                   reference.rms_norm(x, weight, EPS, residual)[0])  # fmt: skip

    def rotary_err() -> float:
        want = reference.rotary_embedding(positions, q, k, cache)
        got = rotary.rotary_embedding(positions, q.clone(), k.clone(), cache)
        return max(err(got[0], want[0]), err(got[1], want[1]))

    return {
        "add_rms_norm": (
            lambda: rms_norm.rms_norm(x, weight, EPS, residual),
            lambda: reference.rms_norm(x, weight, EPS, residual),
            norm_err(),
        ),
        "rotary": (
            lambda: rotary.rotary_embedding(positions, q, k, cache),
            lambda: reference.rotary_embedding(positions, q, k, cache),
            rotary_err(),
        ),
        "silu_mul": (
            lambda: silu_mul.silu_and_mul(gate_up),
            lambda: reference.silu_and_mul(gate_up),
            err(silu_mul.silu_and_mul(gate_up), reference.silu_and_mul(gate_up)),
        ),
    }


def cuda_times_us(fn: Fn, repeat: int) -> tuple[float, float]:
    """(graph, eager) microseconds a call."""
    import triton.testing

    def bench(f: Fn) -> float:
        return float(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")) * 1e3

    fn()  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            fn()
    return bench(graph.replay) / repeat, bench(fn)


def cpu_times_us(fn: Fn, repeat: int) -> tuple[float, float]:
    """Wall-clock medians: only proves the script runs (the interpreter is not a GPU)."""
    fn()
    samples = []
    for _ in range(min(repeat, 3)):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    median = statistics.median(samples)
    return median, median


def rows_for(shapes: Shapes, num_tokens: int, args: argparse.Namespace) -> list[dict]:
    timer = cuda_times_us if args.device == "cuda" else cpu_times_us
    rows, ops = [], make_ops(shapes, num_tokens, args.dtype, args.device)
    for op, (fused, unfused, max_err) in ops.items():
        fused_us, fused_eager_us = timer(fused, args.repeat)
        torch_us, torch_eager_us = timer(unfused, args.repeat)
        rows.append({"tokens": num_tokens, "op": op, "torch_us": torch_us, "fused_us": fused_us,
                     "torch_eager_us": torch_eager_us, "fused_eager_us": fused_eager_us,
                     "max_err": max_err})  # fmt: skip
    by_op = {row["op"]: row for row in rows}
    weights = {"layer": {"add_rms_norm": 2, "rotary": 1, "silu_mul": 1}}
    weights["step"] = {op: n * shapes.num_layers for op, n in weights["layer"].items()}
    weights["step"]["add_rms_norm"] += 1  # the final norm
    for name, counts in weights.items():
        keys = ("torch_us", "fused_us", "torch_eager_us", "fused_eager_us")
        total = {key: sum(by_op[op][key] * n for op, n in counts.items()) for key in keys}
        rows.append({"tokens": num_tokens, "op": name, **total, "max_err": float("nan")})
    for row in rows:
        row["speedup"] = row["torch_us"] / row["fused_us"]
        row["eager_speedup"] = row["torch_eager_us"] / row["fused_eager_us"]
    return rows


COLUMNS = [("tokens", "d"), ("op", "s"), ("torch_us", ".1f"), ("fused_us", ".1f"),
           ("speedup", ".2f"), ("torch_eager_us", ".1f"), ("fused_eager_us", ".1f"),
           ("eager_speedup", ".2f"), ("max_err", ".3g")]  # fmt: skip


def print_rows(rows: list[dict]) -> None:
    widths = [max(12, len(name)) for name, _ in COLUMNS]
    print("  ".join(f"{name:>{w}}" for (name, _), w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        print(
            "  ".join(
                f"{row[key]:>{w}{fmt}}" for (key, fmt), w in zip(COLUMNS, widths, strict=True)
            )
        )


def parse_args() -> argparse.Namespace:
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=lambda s: [int(x) for x in s.split(",")],
                        help="token counts (default 1,64,256,2048; 1,5 on cpu)")  # fmt: skip
    parser.add_argument("--dtype", choices=dtypes, default="bfloat16")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a smoke run, Triton interpreter, tiny shapes")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=20, help="calls per captured graph")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    args.dtype = dtypes[args.dtype]
    args.tokens = args.tokens or ([1, 64, 256, 2048] if args.device == "cuda" else [1, 5])
    return args


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: pass --device cpu for a smoke run under the Triton interpreter")
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels import triton
    import triton

    shapes = Shapes() if args.device == "cuda" else CPU_SHAPES
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    print(f"device: {name}  torch {torch.__version__}  triton {triton.__version__}  {shapes}")
    torch.manual_seed(0)
    rows = [row for num_tokens in args.tokens for row in rows_for(shapes, num_tokens, args)]
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "shapes": vars(shapes), "rows": rows},
                                        indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
