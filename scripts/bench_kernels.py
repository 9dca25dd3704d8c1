"""Benchmark the Triton attention kernels against the GPU's own limits, in one run.

- copy: device-to-device copy bandwidth (bytes read + written), the ceiling for decode.
- decode: paged attention, one query token per sequence, bandwidth = K/V bytes read / time, and
  its ratio to the copy bandwidth. Target: >= 0.7 at context >= 4k.
- prefill: causal paged attention TFLOP/s against torch scaled_dot_product_attention on the same
  shapes (K/V expanded to all heads for SDPA, not timed). Target: >= 0.8x SDPA.

Shapes are one Llama-3-8B attention layer: 32 query heads, 8 KV heads, head_dim 128, bf16,
block size 16, blocks scattered over the cache. Times are medians of triton.testing.do_bench,
which clears the L2 cache before every call; decode is replayed from a CUDA graph, as the engine
runs it. Needs CUDA.

    python scripts/bench_kernels.py                 # the full tables
    python scripts/bench_kernels.py --sweep         # also time other launch configurations
"""

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.attention_config import AttentionConfig, choose_config
from kernels.paged_attention import paged_attention_with_config


@dataclass(frozen=True)
class Layer:
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16
    dtype: torch.dtype = torch.bfloat16


def bench_ms(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def graph_ms(fn) -> float:
    """Time fn replayed from a CUDA graph, as the engine runs decode: no launch overhead."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench_ms(graph.replay)


def copy_bandwidth_gbs(num_bytes: int = 2**30) -> float:
    src = torch.randn(num_bytes // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * num_bytes / ms / 1e6


class PagedCache:
    """One K and one V cache for the largest case; each case takes a random subset of blocks."""

    def __init__(self, layer: Layer, max_tokens: int) -> None:
        self.layer = layer
        num_blocks = triton.cdiv(max_tokens, layer.block_size)
        shape = (num_blocks, layer.block_size, layer.num_kv_heads, layer.head_dim)
        self.k_cache = torch.randn(shape, device="cuda", dtype=layer.dtype)
        self.v_cache = torch.randn(shape, device="cuda", dtype=layer.dtype)

    def batch(self, q_lens: list[int], ctx_lens: list[int]) -> tuple[torch.Tensor, ...]:
        """(query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q) for these sequences."""
        width = triton.cdiv(max(ctx_lens), self.layer.block_size)
        order = torch.randperm(self.k_cache.shape[0], device="cuda")[: len(ctx_lens) * width]
        block_tables = order.view(len(ctx_lens), width).to(torch.int32)
        cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
        query = torch.randn(
            sum(q_lens), self.layer.num_heads, self.layer.head_dim, device="cuda"
        ).to(self.layer.dtype)
        seq_lens = torch.tensor(ctx_lens, dtype=torch.int32, device="cuda")
        return query, self.k_cache, self.v_cache, block_tables, seq_lens, cu.cuda()


def auto_config(layer: Layer, num_seqs: int, max_q: int, max_k: int) -> AttentionConfig:
    return choose_config(
        num_seqs,
        layer.num_kv_heads,
        layer.num_heads // layer.num_kv_heads,
        layer.head_dim,
        max_q,
        max_k,
        layer.dtype,
        torch.device("cuda"),
    )


def decode_row(cache: PagedCache, batch: int, ctx: int, config: AttentionConfig | None) -> dict:
    layer = cache.layer
    args = cache.batch([1] * batch, [ctx] * batch)
    config = config or auto_config(layer, batch, 1, ctx)
    scale = layer.head_dim**-0.5
    ms = graph_ms(lambda: paged_attention_with_config(*args, scale, 1, config))
    kv_bytes = 2 * batch * ctx * layer.num_kv_heads * layer.head_dim * layer.dtype.itemsize
    return {"batch": batch, "context": ctx, "ms": ms, "gbs": kv_bytes / ms / 1e6, **asdict(config)}


def prefill_row(cache: PagedCache, batch: int, seq: int, config: AttentionConfig | None) -> dict:
    layer = cache.layer
    args = cache.batch([seq] * batch, [seq] * batch)
    config = config or auto_config(layer, batch, seq, seq)
    scale = layer.head_dim**-0.5
    ms = bench_ms(lambda: paged_attention_with_config(*args, scale, seq, config))
    q = args[0].view(batch, seq, layer.num_heads, layer.head_dim).transpose(1, 2)
    kv_shape = (batch, layer.num_heads, seq, layer.head_dim)
    k = torch.randn(kv_shape, device="cuda", dtype=layer.dtype)
    v = torch.randn(kv_shape, device="cuda", dtype=layer.dtype)
    sdpa_ms = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    flops = 2 * batch * layer.num_heads * seq * seq * layer.head_dim  # causal: half of 4*S^2*D
    return {
        "batch": batch,
        "seq": seq,
        "ms": ms,
        "tflops": flops / ms / 1e9,
        "sdpa_ms": sdpa_ms,
        "sdpa_tflops": flops / sdpa_ms / 1e9,
        **asdict(config),
    }


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{name:>10}" for name, _ in columns))
    for row in rows:
        print("  ".join(f"{format(row[key], fmt):>10}" for key, fmt in columns))


CONFIG_COLUMNS = [("block_m", "d"), ("block_n", "d"), ("num_splits", "d"), ("num_warps", "d"),
                  ("num_stages", "d")]  # fmt: skip


def run_decode(cache: PagedCache, args: argparse.Namespace, copy_gbs: float) -> list[dict]:
    rows = []
    for batch in args.batches:
        for ctx in args.contexts:
            if batch * ctx <= args.max_cache_tokens:
                rows.append(decode_row(cache, batch, ctx, None))
                rows[-1]["of_copy"] = rows[-1]["gbs"] / copy_gbs
    columns = [("batch", "d"), ("context", "d"), ("ms", ".4f"), ("gbs", ".0f"),
               ("of_copy", ".2f"), *CONFIG_COLUMNS]  # fmt: skip
    print_table(f"decode (copy bandwidth {copy_gbs:.0f} GB/s)", rows, columns)
    return rows


def run_prefill(cache: PagedCache, args: argparse.Namespace) -> list[dict]:
    rows = []
    for shape in args.prefill:
        batch, seq = map(int, shape.split("x"))
        rows.append(prefill_row(cache, batch, seq, None))
        rows[-1]["of_sdpa"] = rows[-1]["tflops"] / rows[-1]["sdpa_tflops"]
    columns = [("batch", "d"), ("seq", "d"), ("ms", ".3f"), ("tflops", ".1f"),
               ("sdpa_tflops", ".1f"), ("of_sdpa", ".2f"), *CONFIG_COLUMNS]  # fmt: skip
    print_table("prefill (causal, no cached prefix)", rows, columns)
    return rows


def run_sweep(cache: PagedCache, copy_gbs: float) -> list[dict]:
    """Other launch configurations at a few points, to tune attention_config's heuristics."""
    layer, rows = cache.layer, []
    for batch, ctx in [(1, 4096), (1, 32768), (4, 32768), (16, 4096), (64, 4096)]:
        auto = auto_config(layer, batch, 1, ctx)
        for block_n, warps, stages in [(64, 4, 2), (128, 4, 2), (64, 4, 3)]:
            for splits in sorted({1, auto.num_splits, 2 * auto.num_splits, auto.num_splits // 2}):
                if splits >= 1:
                    config = AttentionConfig(16, block_n, splits, warps, stages)
                    rows.append(decode_row(cache, batch, ctx, config))
                    rows[-1]["of_copy"] = rows[-1]["gbs"] / copy_gbs
    columns = [("batch", "d"), ("context", "d"), ("ms", ".4f"), ("of_copy", ".2f"),
               *CONFIG_COLUMNS]  # fmt: skip
    print_table("decode sweep", rows, columns)
    prefill_rows = []
    for block_m, block_n, warps, stages in [(128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2),
                                            (128, 64, 8, 4), (64, 64, 4, 3)]:  # fmt: skip
        config = AttentionConfig(block_m, block_n, 1, warps, stages)
        prefill_rows.append(prefill_row(cache, 1, 4096, config))
    columns = [("ms", ".3f"), ("tflops", ".1f"), ("sdpa_tflops", ".1f"), *CONFIG_COLUMNS]
    print_table("prefill sweep (1 x 4096)", prefill_rows, columns)
    return rows + prefill_rows


def parse_args() -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=ints, default=[1, 4, 16, 64, 256])
    parser.add_argument("--contexts", type=ints, default=[512, 1024, 4096, 16384, 32768])
    parser.add_argument("--prefill", type=lambda s: s.split(","),
                        default=["1x1024", "1x4096", "1x8192", "4x2048", "16x512"],
                        help="BATCHxSEQ,... causal prefill shapes")  # fmt: skip
    parser.add_argument("--max-cache-tokens", type=int, default=256 * 32768,
                        help="skip decode cases with more cached tokens (memory)")  # fmt: skip
    parser.add_argument("--sweep", action="store_true", help="also time other configurations")
    parser.add_argument("--json", type=Path, help="write every row here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py needs a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {triton.__version__}")  # fmt: skip
    copy_gbs = copy_bandwidth_gbs()
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s (read + write)")
    max_prefill = max(math.prod(map(int, s.split("x"))) for s in args.prefill)
    cache = PagedCache(Layer(), max(args.max_cache_tokens, max_prefill))
    results = {"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs}
    results["decode"] = run_decode(cache, args, copy_gbs)
    results["prefill"] = run_prefill(cache, args)
    if args.sweep:
        results["sweep"] = run_sweep(cache, copy_gbs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
