#!/usr/bin/env python
"""GEMM microbenchmarks of the quantized linear layers against bf16 cuBLAS, on one GPU, at the
projections of Llama-3-8B and Qwen3-8B, for M (tokens a step) = 1, 16, 64, 256, 1024.

Per shape and M, microseconds a call (CUDA-graph replays, triton.testing.do_bench_cudagraph)
and the speed-up over bf16, for:
  bf16          x @ W.T, cuBLAS
  fp8           torch._scaled_mm, e4m3 per channel x per token (input already quantized, as
                the fused RMSNorm / SiLU*mul hand it over)
  fp8+quant     the same with the standalone per-token quantization kernel before it (o_proj)
  w4a16         the Triton W4A16 kernels (group 128): choose_config's GEMV or tl.dot tiles
  int4-deq      dequantize to bf16, then cuBLAS (what M >= INT4_DEQUANTIZE_MIN_TOKENS runs)
  block-fp8     the Triton block-FP8 GEMM (128 x 128 weight blocks, activations quantized in it)
plus the weight bytes each reads, as GB/s at that time (the decode-side figure to hold against
the copy bandwidth). `--sweep-w4a16` also times the W4A16 kernels' configurations at each M (the
tl.dot tiles by split-K; up to 16 rows the GEMV's tiles by split-K, then its warps and stages)
and prints the fastest of each kernel and the default's time, to tune
`kernels.w4a16_config.choose_config`:

  python scripts/bench_quant.py [--models llama3-8b,qwen3-8b] [--m 1,16,64,256,1024]
  python scripts/bench_quant.py --m 1,2,4,8,16 --sweep-w4a16
"""

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import triton
from triton.testing import do_bench_cudagraph

from llm_worker.kernels import reference
from llm_worker.kernels.block_fp8_gemm import block_fp8_matmul
from llm_worker.kernels.fp8_quant import quantize_fp8
from llm_worker.kernels.w4a16 import dequantize_int4, w4a16_matmul
from llm_worker.kernels.w4a16_config import W4A16Config, choose_config
from llm_worker.models.quant.block_fp8 import quantize_block_fp8
from llm_worker.models.quant.gemms import scaled_mm_fp8_linear
from llm_worker.models.quant.int4_packing import pack_rows, rtn_int4

# (K, N) of each projection, q|k|v and gate|up fused as the model runs them
SHAPES = {
    "llama3-8b": {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672),
                  "down": (14336, 4096)},
    "qwen3-8b": {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 24576),
                 "down": (12288, 4096)},
}  # fmt: skip
GROUP = 128


def weights(k: int, n: int) -> dict[str, torch.Tensor]:
    w = torch.randn(n, k, device="cuda") * 0.02
    fp8, fp8_scale = reference.quantize_fp8(w)
    q, zeros, scales = rtn_int4(w, GROUP)
    block, block_scale = quantize_block_fp8(w, (128, 128))
    return {"bf16": w.bfloat16(), "fp8": fp8, "fp8_scale": fp8_scale[:, 0].contiguous(),
            "qweight": pack_rows(q), "scales": scales, "zeros": zeros.to(torch.uint8),
            "block": block, "block_scale": block_scale}  # fmt: skip


def candidates(x: torch.Tensor, w: dict[str, torch.Tensor]) -> dict[str, Callable[[], object]]:
    a = quantize_fp8(x)
    int4 = (w["qweight"], w["scales"], w["zeros"], GROUP)
    return {
        "bf16": lambda: x @ w["bf16"].T,
        "fp8": lambda: scaled_mm_fp8_linear(a, w["fp8"], w["fp8_scale"], None, torch.bfloat16),
        "fp8+quant": lambda: scaled_mm_fp8_linear(
            quantize_fp8(x), w["fp8"], w["fp8_scale"], None, torch.bfloat16
        ),
        "w4a16": lambda: w4a16_matmul(x, *int4),
        "int4-deq": lambda: x @ dequantize_int4(*int4, torch.bfloat16),
        "block-fp8": lambda: block_fp8_matmul(x, w["block"], w["block_scale"]),
    }


def weight_bytes(k: int, n: int) -> dict[str, int]:
    fp8 = n * k + 4 * n
    int4 = n * k // 2 + 3 * (k // GROUP) * n
    return {"bf16": 2 * n * k, "fp8": fp8, "fp8+quant": fp8, "w4a16": int4, "int4-deq": int4,
            "block-fp8": n * k + 4 * triton.cdiv(n, 128) * triton.cdiv(k, 128)}  # fmt: skip


def time_us(fn: Callable[[], object], rep: int = 50) -> float:
    return do_bench_cudagraph(fn, rep=rep) * 1e3


def _gemv_tiles(m: int, n: int, k: int, num_sms: int) -> list[W4A16Config]:
    """GEMV tiles (at most 64 fp32 products a thread on 4 warps) by every power-of-two split-K
    that gives the grid between half a program and 32 programs a multiprocessor."""
    block_m = triton.next_power_of_2(m)
    tiles = []
    for block_n in (64, 128, 256):
        for block_k in (32, 64, 128):
            if block_m * block_k // 8 * block_n > 64 * 128:
                continue
            split_k = 1
            while (k // block_k) % split_k == 0 and split_k <= 64:
                tiles.append(W4A16Config(block_m, block_n, block_k, split_k, 4, 2, gemv=True))
                split_k *= 2
    programs = {c: triton.cdiv(m, c.block_m) * triton.cdiv(n, c.block_n) * c.split_k for c in tiles}
    return [c for c in tiles if num_sms // 2 <= programs[c] <= 32 * num_sms]


def sweep_w4a16(x: torch.Tensor, w: dict[str, torch.Tensor], k: int, n: int) -> str:
    """Times the tl.dot kernel's tile widths by split-K and, up to 16 rows, the GEMV's tiles by
    split-K, then the best GEMV tile's warps and stages; prints the best of each kernel and the
    default choose_config."""
    m, num_sms = x.shape[0], torch.cuda.get_device_properties(0).multi_processor_count
    int4 = (w["qweight"], w["scales"], w["zeros"], GROUP)

    def timed(configs: list[W4A16Config]) -> dict[W4A16Config, float]:
        return {c: time_us(partial(w4a16_matmul, x, *int4, c), rep=20) for c in configs}

    dot = timed([W4A16Config(max(16, min(128, triton.next_power_of_2(m))), block_n, 128, split_k)
                 for block_n in (32, 64, 128) for split_k in (1, 2, 4, 8, 16)
                 if (k // 128) % split_k == 0])  # fmt: skip
    found = {"dot": min(dot, key=dot.__getitem__)}
    tried = dict(dot)
    if m <= 16:
        gemv = timed(_gemv_tiles(m, n, k, num_sms))
        best = min(gemv, key=gemv.__getitem__)
        gemv |= timed([replace(best, num_warps=warps, num_stages=stages)
                       for warps in (2, 4, 8) for stages in (1, 2, 3, 4)])  # fmt: skip
        found["gemv"] = min(gemv, key=gemv.__getitem__)
        tried |= gemv
    default = choose_config(m, n, k, GROUP, num_sms)
    tried |= timed([default]) if default not in tried else {}
    cells = [f"{name} {cfg} {tried[cfg]:.1f} us" for name, cfg in found.items()]
    return "; ".join([*cells, f"default {default} {tried[default]:.1f} us"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="llama3-8b,qwen3-8b")
    p.add_argument("--m", default="1,16,64,256,1024")
    p.add_argument("--sweep-w4a16", action="store_true")
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()
    sizes = [int(m) for m in args.m.split(",")]
    figures: dict[str, dict] = {"gpu": torch.cuda.get_device_name()}  # type: ignore[dict-item]
    print(f"GPU {figures['gpu']}: microseconds a call (speed-up over bf16; weight GB/s)")
    for model in args.models.split(","):
        for layer, (k, n) in SHAPES[model].items():
            w = weights(k, n)
            nbytes = weight_bytes(k, n)
            for m in sizes:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                times = {name: time_us(fn) for name, fn in candidates(x, w).items()}
                figures[f"{model}/{layer}/{m}"] = times
                cells = [f"{name} {t:.1f} ({times['bf16'] / t:.2f}x; {nbytes[name] / t / 1e3:.0f})"
                         for name, t in times.items()]  # fmt: skip
                print(f"{model} {layer} [{k}x{n}] M={m}: " + ", ".join(cells))
                if args.sweep_w4a16:
                    print("    w4a16 " + sweep_w4a16(x, w, k, n))
            del w
            torch.cuda.empty_cache()
    if args.output_json:
        args.output_json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
