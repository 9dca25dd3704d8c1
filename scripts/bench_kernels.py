"""Benchmark the Triton attention kernels against the GPU's own limits, in one run.

- copy: device-to-device copy bandwidth (bytes read + written), the ceiling for decode.
- decode: paged attention, one query token per sequence, bandwidth = K/V bytes read / time, and
  its ratio to the copy bandwidth. Target: >= 0.7 at context >= 4k. Timed three ways: one
  layer's launch replayed alone (it carries the whole graph launch's fixed cost), and per layer
  in a graph of --graph-layers launches, as a decode step replays a model's layers: `layer_*`
  with every layer reading its own K/V through one shared block table (the engine passes one
  set of attention metadata to all layers), `own_layer_*` with every layer its own block table
  over the whole cache (metadata from DRAM in every layer; the figure of earlier sessions).
- prefill: causal paged attention TFLOP/s against torch scaled_dot_product_attention on the same
  shapes (K/V expanded to all heads for SDPA, not timed). Target: >= 0.8x SDPA. Both are timed
  replayed from a CUDA graph (kernel time: the ratio) and called eagerly (kernel time or host
  launch time, whichever is longer; the Python launcher costs tens of microseconds).

Shapes are one Llama-3-8B attention layer: 32 query heads, 8 KV heads, head_dim 128, bf16,
block size 16, blocks scattered over the cache. Times are medians of triton.testing.do_bench,
which clears the L2 cache before every call; decode is replayed from a CUDA graph, as the engine
runs it. Needs CUDA.

    python scripts/bench_kernels.py                 # the full tables
    python scripts/bench_kernels.py --references    # also copy, sum and SDPA on decode's bytes
    python scripts/bench_kernels.py --decoder-chain # decode inside a decoder layer's launches
    python scripts/bench_kernels.py --mixed         # decodes beside a prefill: one launch or two
    python scripts/bench_kernels.py --sweep         # also time other launch configurations
    python scripts/bench_kernels.py --sweep-only    # only those
"""

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_worker.kernels import paged_attention as paged_attention_module
from llm_worker.kernels.attention_config import (
    SPLIT_DECODE_MAX_ROWS,
    AttentionConfig,
    PrefillTile,
    choose_config,
    split_walk,
)
from llm_worker.kernels.fp8_format import FP8_DTYPE
from llm_worker.kernels.merge_splits import merge_splits
from llm_worker.kernels.paged_attention import paged_attention_with_config
from llm_worker.kernels.pdl import pdl_device


@dataclass(frozen=True)
class Layer:
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16
    dtype: torch.dtype = torch.bfloat16
    kv_dtype: torch.dtype = torch.bfloat16  # the cache's: bf16, or FP8 (e4m3)

    def kv_bytes(self, batch: int, ctx: int) -> int:
        """Bytes of keys and values that batch sequences of ctx tokens hold in one layer."""
        return 2 * batch * ctx * self.num_kv_heads * self.head_dim * self.kv_dtype.itemsize


# Attention launches as programmatic dependents where the GPU can (Hopper on), as the engine's
# triton backend launches them; --no-pdl turns it off.
PDL = True


def attention(*args, **kwargs) -> torch.Tensor:
    """`paged_attention_with_config`, launched the way the bench was asked to (`PDL`)."""
    return paged_attention_with_config(*args, pdl=PDL, **kwargs)


def bench_ms(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def capture(fn) -> torch.cuda.CUDAGraph:
    """fn run once (compiling what it launches), then captured in a CUDA graph."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_ms(fn) -> float:
    """Time fn replayed from a CUDA graph, as the engine runs decode: no host launch overhead."""
    return bench_ms(capture(fn).replay)


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
        self.k_cache = torch.randn(shape, device="cuda", dtype=layer.dtype).to(layer.kv_dtype)
        self.v_cache = torch.randn(shape, device="cuda", dtype=layer.dtype).to(layer.kv_dtype)

    def batch(
        self, q_lens: list[int], ctx_lens: list[int], num_blocks: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q) for these sequences,
        their blocks drawn at random from the first num_blocks (default: all) of the cache."""
        width = triton.cdiv(max(ctx_lens), self.layer.block_size)
        pool = num_blocks or self.k_cache.shape[0]
        order = torch.randperm(pool, device="cuda")[: len(ctx_lens) * width]
        block_tables = order.view(len(ctx_lens), width).to(torch.int32)
        cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
        query = torch.randn(
            sum(q_lens), self.layer.num_heads, self.layer.head_dim, device="cuda"
        ).to(self.layer.dtype)
        seq_lens = torch.tensor(ctx_lens, dtype=torch.int32, device="cuda")
        return query, self.k_cache, self.v_cache, block_tables, seq_lens, cu.cuda()

    def step_kv(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's K and V as a model hands them over: views into one fused QKV output."""
        layer = self.layer
        heads = layer.num_heads + 2 * layer.num_kv_heads
        qkv = torch.randn(num_tokens, heads, layer.head_dim, device="cuda").to(layer.dtype)
        k = qkv[:, layer.num_heads : layer.num_heads + layer.num_kv_heads]
        return k, qkv[:, layer.num_heads + layer.num_kv_heads :]

    def layer_calls(self, batch: int, ctx: int, layers: int) -> list[tuple[torch.Tensor, ...]]:
        """Decode arguments for up to `layers` layers, as a model's decode step passes them:
        every layer its own query and its own slab of the cache (a per-layer cache tensor, so
        the L2 cannot serve one layer's keys to the next), one block table, lengths and query
        offsets shared by all (the engine's one AttentionMetadata). Fewer layers where one
        slab a layer cannot hold the case."""
        total_blocks = self.k_cache.shape[0]
        slab = max(batch * triton.cdiv(ctx, self.layer.block_size), total_blocks // layers)
        query, _, _, *meta = self.batch([1] * batch, [ctx] * batch, num_blocks=slab)
        return [
            (torch.randn_like(query), self.k_cache[i * slab : (i + 1) * slab],
             self.v_cache[i * slab : (i + 1) * slab], *meta)
            for i in range(min(layers, total_blocks // slab))
        ]  # fmt: skip

    def step_kv_or_cache(
        self, num_tokens: int, step_kv: bool, config: AttentionConfig
    ) -> tuple[tuple[torch.Tensor | None, torch.Tensor | None], str]:
        """(key, value) to pass a prefill launch and the name of the path it takes: "step" where
        the new keys come from the step's K/V (TMA), as the engine passes them, else "cache"."""
        new_kv = self.step_kv(num_tokens) if step_kv else (None, None)
        return new_kv, "step" if step_kv and config.step_kv else "cache"


def auto_config(
    layer: Layer,
    num_seqs: int,
    max_q: int,
    max_k: int,
    num_tokens: int | None = None,
    prefill_tile: PrefillTile | None = None,
) -> AttentionConfig:
    """The rules' configuration for this layer's launch, as the engine's would get it."""
    return choose_config(
        num_seqs,
        layer.num_kv_heads,
        layer.num_heads // layer.num_kv_heads,
        layer.head_dim,
        max_q,
        max_k,
        layer.dtype,
        torch.device("cuda"),
        num_tokens=num_tokens,
        prefill_tile=prefill_tile,
        fp8_cache=layer.kv_dtype == FP8_DTYPE,
    )


def per_layer_ms(calls: list[Callable[[], object]]) -> float:
    """ms per call of `calls` replayed in order from one CUDA graph."""

    def step() -> None:
        for call in calls:
            call()

    return graph_ms(step) / len(calls)


def decode_row(
    cache: PagedCache,
    batch: int,
    ctx: int,
    config: AttentionConfig | None,
    layers: int = 1,
    copy_gbs: float | None = None,
) -> dict:
    """One layer's decode attention; with layers > 1 also per layer in a graph of that many,
    timed two ways:

    - layer_*: as a model's decode step runs (`PagedCache.layer_calls`; `layers` in the row is
      how many ran).
    - own_layer_*: every layer with its own block tables, over the whole cache (the figure
      of earlier sessions): the metadata comes from DRAM in every layer."""
    layer = cache.layer
    config = config or auto_config(layer, batch, 1, ctx)
    scale = layer.head_dim**-0.5
    first = cache.batch([1] * batch, [ctx] * batch)
    ms = graph_ms(lambda: attention(*first, scale, 1, config))
    kv_bytes = layer.kv_bytes(batch, ctx)
    row = {"batch": batch, "context": ctx, "ms": ms, "gbs": kv_bytes / ms / 1e6, **asdict(config)}
    if layers > 1:
        shared = cache.layer_calls(batch, ctx, layers)
        row["layers"] = len(shared)
        own = [cache.batch([1] * batch, [ctx] * batch) for _ in range(layers)]
        for key, calls in (("layer", shared), ("own_layer", own)):
            row[f"{key}_ms"] = layer_ms = per_layer_ms(
                [lambda a=args: attention(*a, scale, 1, config) for args in calls]
            )
            row[f"{key}_gbs"] = kv_bytes / layer_ms / 1e6
    if copy_gbs:
        for key in ("", "layer_", "own_layer_"):
            if f"{key}gbs" in row:
                row[f"{key}of_copy"] = row[f"{key}gbs"] / copy_gbs
    return row


# Per-layer buffers of the decode references stay under this many bytes (fewer layers if not).
REFERENCE_BYTES = 4 << 30


def sdpa_backends() -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }


def reference_row(layer: Layer, batch: int, ctx: int, layers: int, copy_gbs: float) -> dict:
    """What other kernels reach on one decode layer's bytes (batch x ctx keys and values), per
    layer in a graph of up to `layers`, every layer its own tensors, as decode_row's layer_*:

    - copy: a device copy moving the same bytes (half of them read, half written, the way
      copy_gbs counts a copy): the copy bandwidth at this size rather than at 1 GiB.
    - sum: torch.sum reading all of them (a read-only stream of that size).
    - sdpa_<backend>: torch SDPA, one query token a sequence, over contiguous [batch, kv_heads,
      ctx, head_dim] K/V with enable_gqa, under each backend that accepts the shape.

    Every figure is K/V bytes / time, as a fraction of copy_gbs."""
    kv_bytes = layer.kv_bytes(batch, ctx)
    count = max(1, min(layers, REFERENCE_BYTES // kv_bytes))
    row: dict = {"batch": batch, "context": ctx, "ref_layers": count}

    def of_copy(ms: float) -> float:
        return kv_bytes / ms / 1e6 / copy_gbs

    elements = kv_bytes // layer.dtype.itemsize
    slabs = [torch.randn(elements, device="cuda", dtype=layer.dtype) for _ in range(count)]
    halves = [(slab[: elements // 2], slab[elements // 2 :]) for slab in slabs]
    row["copy"] = of_copy(per_layer_ms([lambda h=h: h[1].copy_(h[0]) for h in halves]))
    row["sum"] = of_copy(per_layer_ms([lambda s=s: s.sum() for s in slabs]))
    del slabs, halves
    kv_shape = (batch, layer.num_kv_heads, ctx, layer.head_dim)
    tensors = [
        (
            torch.randn(batch, layer.num_heads, 1, layer.head_dim, device="cuda").to(layer.dtype),
            torch.randn(kv_shape, device="cuda", dtype=layer.dtype),
            torch.randn(kv_shape, device="cuda", dtype=layer.dtype),
        )
        for _ in range(count)
    ]
    from torch.nn.attention import sdpa_kernel

    for name, backend in sdpa_backends().items():

        def call(t: tuple = tensors[0]) -> torch.Tensor:
            return F.scaled_dot_product_attention(*t, enable_gqa=True)

        with sdpa_kernel(backend):
            try:
                call()
            except RuntimeError:  # this backend does not take the shape
                row[f"sdpa_{name}"] = float("nan")
                continue
            calls = [lambda t=t: call(t) for t in tensors]
            row[f"sdpa_{name}"] = of_copy(per_layer_ms(calls))
    return row


def run_references(
    layer: Layer, args: argparse.Namespace, copy_gbs: float, decode: list[dict]
) -> list[dict]:
    """reference_row for the decode cells of batch <= 16 at context >= 4k, beside our kernel's
    layer_of_copy for the same cell where the decode table has it."""
    ours = {(r["batch"], r["context"]): r.get("layer_of_copy", r["of_copy"]) for r in decode}
    rows = []
    for batch in [b for b in args.batches if b <= 16]:
        for ctx in [c for c in args.contexts if c >= 4096]:
            row = reference_row(layer, batch, ctx, args.graph_layers, copy_gbs)
            row["ours"] = ours.get((batch, ctx), float("nan"))
            rows.append(row)
    columns = [("batch", "d"), ("context", "d"), ("ref_layers", "d"), ("ours", ".3f"),
               ("copy", ".3f"), ("sum", ".3f"),
               *((f"sdpa_{name}", ".3f") for name in sdpa_backends())]  # fmt: skip
    title = ("decode references, per layer in one graph, K/V bytes / time of copy bandwidth: "
             "ours (layer_of_copy), a copy and a sum of the same bytes, torch SDPA backends "
             "(nan: backend refused the shape)")  # fmt: skip
    print_table(title, rows, columns)
    return rows


def sdpa_call(layer: Layer, batch: int, seq: int) -> Callable[[], torch.Tensor]:
    """torch SDPA, causal, on contiguous [batch, heads, seq, head_dim] tensors (K/V expanded to
    all query heads)."""
    shape = (batch, layer.num_heads, seq, layer.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=layer.dtype) for _ in range(3))
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_ms(layer: Layer, batch: int, seq: int) -> tuple[float, float]:
    """(graph, eager) ms of `sdpa_call`."""
    fn = sdpa_call(layer, batch, seq)
    return graph_ms(fn), bench_ms(fn)


def prefill_row(
    cache: PagedCache,
    batch: int,
    seq: int,
    config: AttentionConfig | None,
    sdpa: tuple,
    step_kv: bool = True,
) -> dict:
    """step_kv: the new keys come from the step's K/V (TMA), as the engine passes them; else
    every key is gathered from the paged cache."""
    layer = cache.layer
    args = cache.batch([seq] * batch, [seq] * batch)
    config = config or auto_config(layer, batch, seq, seq)
    new_kv, keys = cache.step_kv_or_cache(batch * seq, step_kv, config)
    scale = layer.head_dim**-0.5
    fn = lambda: attention(*args, scale, seq, config, *new_kv)  # noqa: E731
    ms, eager_ms = graph_ms(fn), bench_ms(fn)
    flops = 2 * batch * layer.num_heads * seq * seq * layer.head_dim  # causal: half of 4*S^2*D
    return {
        "batch": batch,
        "seq": seq,
        "keys": keys,
        "ms": ms,
        "tflops": flops / ms / 1e9,
        "sdpa_ms": sdpa[0],
        "sdpa_tflops": flops / sdpa[0] / 1e9,
        "of_sdpa": sdpa[0] / ms,
        "eager_ms": eager_ms,
        "sdpa_eager_ms": sdpa[1],
        "eager_of_sdpa": sdpa[1] / eager_ms,
        **asdict(config),
    }


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    widths = [max(10, len(name)) for name, _ in columns]
    print("  ".join(f"{name:>{w}}" for (name, _), w in zip(columns, widths, strict=True)))
    for row in rows:
        cells = [format(row[key], fmt) for key, fmt in columns]
        print("  ".join(f"{cell:>{w}}" for cell, w in zip(cells, widths, strict=True)))


CONFIG_COLUMNS = [("block_m", "d"), ("block_n", "d"), ("num_splits", "d"), ("num_warps", "d"),
                  ("num_stages", "d"), ("max_registers", "")]  # fmt: skip


DECODE_COLUMNS = [("batch", "d"), ("context", "d"), ("ms", ".4f"), ("gbs", ".0f"),
                  ("of_copy", ".2f"), *CONFIG_COLUMNS]  # fmt: skip
# Decode tables add how a split walks its keys: in one loop (`one_pass`), and the keys whose
# block ids it loads at once (`ids_chunk_keys`, 0: a tile's at a time).
LAYERED_COLUMNS = [*DECODE_COLUMNS[:5], ("layers", "d"), ("layer_ms", ".4f"), ("layer_gbs", ".0f"),
                   ("layer_of_copy", ".3f"), ("own_layer_of_copy", ".3f"),
                   *CONFIG_COLUMNS, ("one_pass", ""), ("ids_chunk_keys", "d")]  # fmt: skip


def run_decode(cache: PagedCache, args: argparse.Namespace, copy_gbs: float) -> list[dict]:
    rows = []
    for batch in args.batches:
        for ctx in args.contexts:
            if batch * ctx <= args.max_cache_tokens:
                rows.append(decode_row(cache, batch, ctx, None, args.graph_layers, copy_gbs))
    title = f"decode (copy bandwidth {copy_gbs:.0f} GB/s)"
    if args.graph_layers > 1:
        title += (
            f"; layer_*: per layer, `layers` layers replayed from one graph, each its own K/V,"
            f" sharing one block table as the engine's do; own_layer_*: {args.graph_layers}"
            f" layers each with its own block table"
        )
    print_table(title, rows, LAYERED_COLUMNS if args.graph_layers > 1 else DECODE_COLUMNS)
    return rows


PREFILL_COLUMNS = [("batch", "d"), ("seq", "d"), ("keys", ""), ("ms", ".3f"), ("tflops", ".1f"),
                   ("sdpa_tflops", ".1f"), ("of_sdpa", ".2f"), ("eager_ms", ".3f"),
                   ("sdpa_eager_ms", ".3f"), ("eager_of_sdpa", ".2f"), *CONFIG_COLUMNS]  # fmt: skip


def run_prefill(cache: PagedCache, shapes: list[tuple[int, int]], sdpa: dict) -> list[dict]:
    """Each shape twice: new keys from the step's K/V (the engine's path), then all from the
    cache (the path without TMA)."""
    rows = [
        prefill_row(cache, batch, seq, None, sdpa[batch, seq], step_kv)
        for batch, seq in shapes
        for step_kv in (True, False)
    ]
    print_table("prefill (causal, no cached prefix; ms = CUDA graph replay)", rows, PREFILL_COLUMNS)
    return rows


def merge_row(cache: PagedCache, batch: int, ctx: int) -> dict:
    """The split-K merge launch alone, on partials the size that decode at (batch, ctx) writes."""
    layer = cache.layer
    splits = auto_config(layer, batch, 1, ctx).num_splits
    out = torch.empty(batch, layer.num_heads, layer.head_dim, device="cuda", dtype=layer.dtype)
    part_acc = torch.randn(splits, *out.shape, device="cuda")
    part_max, part_sum = torch.randn(2, splits, batch, layer.num_heads, device="cuda")
    num_real = torch.tensor([batch], dtype=torch.int32, device="cuda")
    ms = graph_ms(lambda: merge_splits(out, part_acc, part_max, part_sum, num_real))
    return {"batch": batch, "context": ctx, "num_splits": splits, "merge_ms": ms}


# Launch configurations the sweep times in place of the heuristic's.
DECODE_CANDIDATES = [  # (block_n, num_stages, split-K from batch 16, num_warps)
    (64, 2, True, 4), (64, 3, True, 4), (128, 3, True, 4), (64, 3, False, 4), (128, 3, False, 4)
]  # fmt: skip


def decode_candidate(text: str) -> tuple[int, int, bool, int]:
    """BLOCK_N:STAGES[:WARPS], split-K as the heuristic picks it."""
    block_n, stages, *warps = map(int, text.split(":"))
    return block_n, stages, True, warps[0] if warps else 4


# BLOCK_M:BLOCK_N:WARPS:STAGES, as --prefill-candidates takes them (its default).
PREFILL_CANDIDATES = (
    "128:64:8:2,128:64:8:4,128:128:8:2,128:128:8:3,64:64:4:2,64:64:4:3,64:64:4:4,64:128:4:2,"
    "64:128:4:3,64:32:4:2,64:32:4:3,128:32:8:3"
)


def run_sweep(cache: PagedCache, args: argparse.Namespace, copy_gbs: float, sdpa: dict) -> list:
    """Whole decode and prefill tables under other launch configurations."""
    layer, rows = cache.layer, []
    for block_n, stages, split_from_16, warps in args.decode_candidates or DECODE_CANDIDATES:
        table = []
        for batch in args.batches:
            for ctx in args.contexts:
                if batch * ctx <= args.max_cache_tokens:
                    auto = auto_config(layer, batch, 1, ctx)
                    splits = auto.num_splits if batch < 16 or split_from_16 else 1
                    # The split walk follows the rule for this tile and split count (auto's
                    # holds one of auto's splits). A decode tile, as this bf16 layer of
                    # head_dim 128 is never one of choose_config's wide ones.
                    one_pass, ids_chunk_keys = split_walk(
                        block_n, splits, stages, ctx, auto.block_m <= SPLIT_DECODE_MAX_ROWS
                    )
                    config = replace(auto, block_n=block_n, num_stages=stages, num_splits=splits,
                                     num_warps=warps, one_pass=one_pass,
                                     ids_chunk_keys=ids_chunk_keys)  # fmt: skip
                    table.append(decode_row(cache, batch, ctx, config, args.graph_layers,
                                            copy_gbs))  # fmt: skip
        title = f"decode sweep: block_n {block_n}, {stages} stages, {warps} warps, split-K from "
        columns = LAYERED_COLUMNS if args.graph_layers > 1 else DECODE_COLUMNS
        print_table(title + f"batch 16 {split_from_16}", table, columns)
        rows += table
    if args.decode_only:
        return rows
    merges = [merge_row(cache, batch, ctx) for batch, ctx in [(1, 4096), (1, 32768), (4, 4096)]]
    columns = [("batch", "d"), ("context", "d"), ("num_splits", "d"), ("merge_ms", ".4f")]
    print_table("split-K merge launch alone (CUDA graph)", merges, columns)
    for block_m, warps, block_n, stages, max_registers in args.prefill_candidates:
        config = AttentionConfig(block_m, block_n, 1, warps, stages, max_registers=max_registers)
        table = [prefill_row(cache, b, s, config, sdpa[b, s]) for b, s in args.shapes]
        print_table("prefill sweep", table, PREFILL_COLUMNS)
        rows += table
    return rows + merges


def mixed_row(
    cache: PagedCache,
    q_lens: list[int],
    ctx_lens: list[int],
    split: bool = True,
    step_kv: bool = True,
    tile: PrefillTile | None = None,
) -> dict:
    """One attention launch over sequences of q_lens new tokens whose contexts (the new tokens
    included) are ctx_lens, this step's K/V passed as the engine passes them (step_kv as in
    prefill_row), under the rules' configuration, or `tile` in place of the rules' prefill tile;
    split=False: without split-K."""
    layer = cache.layer
    args = cache.batch(q_lens, ctx_lens)
    tokens, max_q = sum(q_lens), max(q_lens)
    config = auto_config(layer, len(q_lens), max_q, max(ctx_lens), tokens, tile)
    config = config if split else replace(config, num_splits=1)
    scale = layer.head_dim**-0.5
    new_kv, keys = cache.step_kv_or_cache(tokens, step_kv, config)
    ms = graph_ms(lambda: attention(*args, scale, max_q, config, *new_kv))
    return {"keys": keys, "ms": ms, **asdict(config)}


def chunk_lens(chunk: int, ctx: int, decodes: int) -> tuple[list[int], list[int]]:
    """(q_lens, ctx_lens) of a chunked-prefill step: `decodes` sequences decoding at context 512
    beside a `chunk`-token piece of a prompt whose context (the chunk included) is `ctx`."""
    return [1] * decodes + [chunk], [512] * decodes + [ctx]


def chunk_row(
    cache: PagedCache, chunk: int, ctx: int, decodes: int, split: bool, step_kv: bool = True
) -> dict:
    """One chunked-prefill step's attention (`chunk_lens`)."""
    row = mixed_row(cache, *chunk_lens(chunk, ctx, decodes), split, step_kv)
    return {"decodes": decodes, "chunk": chunk, "context": ctx, **row}


def run_chunks(cache: PagedCache, args: argparse.Namespace) -> list[dict]:
    """Chunked prefill's attention with the split the heuristic picks, and without a split."""
    rows = []
    for chunk in args.chunks:
        for split in (False, True):
            rows.append(chunk_row(cache, chunk, args.chunk_context, args.chunk_decodes, split))
        rows[-1]["speedup"] = rows[-2]["ms"] / rows[-1]["ms"]
        rows[-2]["speedup"] = 1.0
    columns = [("decodes", "d"), ("chunk", "d"), ("context", "d"), ("keys", ""), ("ms", ".4f"),
               ("speedup", ".2f"), *CONFIG_COLUMNS]  # fmt: skip
    print_table("chunked prefill step (CUDA graph; one pass, then the chosen split)", rows, columns)
    return rows


def rules_ms(cache: PagedCache, q_lens: list[int], ctx_lens: list[int], hints: tuple[int, int],
             apart: bool) -> float:  # fmt: skip
    """One layer's attention as `paged_attention`'s rules launch it under these (max_seqlen_q,
    max_seqlen_k) hints, this step's K/V passed, with DECODE_TILES_APART on or off; replayed
    from a CUDA graph."""
    args = cache.batch(q_lens, ctx_lens)
    key, value = cache.step_kv(sum(q_lens))
    scale = cache.layer.head_dim**-0.5
    saved = paged_attention_module.DECODE_TILES_APART
    paged_attention_module.DECODE_TILES_APART = apart
    try:
        graph = capture(lambda: paged_attention_module.paged_attention(
            *args, scale, *hints, key, value, pdl=PDL))  # fmt: skip
    finally:
        paged_attention_module.DECODE_TILES_APART = saved
    return bench_ms(graph.replay)


def run_mixed(cache: PagedCache, args: argparse.Namespace) -> list[dict]:
    """Decoding sequences beside one prompt's prefill, under the hints of the engine's prefill
    graphs (the token budget and the model length): in one launch of prefill tiles, and with
    the decodes apart in a decode launch (DECODE_TILES_APART); then each part alone under its
    own hints, what the two launches cannot beat."""
    rows = []
    hints = (args.mixed_budget, args.mixed_budget)
    prefill = args.mixed_prefill
    for decodes in args.mixed_decodes:
        for ctx in args.mixed_contexts:
            q_lens, ctx_lens = [1] * decodes + [prefill], [ctx] * decodes + [prefill]
            one = rules_ms(cache, q_lens, ctx_lens, hints, apart=False)
            apart = rules_ms(cache, q_lens, ctx_lens, hints, apart=True)
            alone_d = rules_ms(cache, [1] * decodes, [ctx] * decodes, (1, ctx), apart=False)
            alone_p = rules_ms(cache, [prefill], [prefill], (prefill, prefill), apart=False)
            rows.append({"decodes": decodes, "context": ctx, "prefill": prefill,
                         "one_launch_ms": one, "apart_ms": apart, "speedup": one / apart,
                         "decodes_alone_ms": alone_d, "prefill_alone_ms": alone_p})  # fmt: skip
    columns = [("decodes", "d"), ("context", "d"), ("prefill", "d"), ("one_launch_ms", ".4f"),
               ("apart_ms", ".4f"), ("speedup", ".2f"), ("decodes_alone_ms", ".4f"),
               ("prefill_alone_ms", ".4f")]  # fmt: skip
    print_table(f"decodes beside a prefill (CUDA graph; hints {hints})", rows, columns)
    return rows


def prefix_hit_lens(text: str) -> tuple[list[int], list[int]]:
    """BATCHxNEW+PREFIX: BATCH prompts of NEW tokens each over a cached prefix of PREFIX."""
    batch, rest = text.split("x")
    new, prefix = map(int, rest.split("+"))
    return [new] * int(batch), [new + prefix] * int(batch)


def prefill_tile(text: str) -> PrefillTile:
    """BLOCK_M:BLOCK_N:WARPS:STAGES[:MAXNREG] as choose_config's prefill_tile."""
    block_m, block_n, warps, stages, *regs = map(int, text.split(":"))
    return block_m, warps, block_n, stages, regs[0] if regs else None


def run_tile_candidates(cache: PagedCache, args: argparse.Namespace) -> list[dict]:
    """Prefill launches over a cached context (chunked prefill beside decodes, prompts over a
    prefix-cache hit) under the rules' tile, then under each --tile-candidates tile (list one
    twice to alternate), each with the split count the rules give that tile."""
    shapes = [
        (
            f"chunk {c} over {args.chunk_context} + {args.chunk_decodes} decodes",
            chunk_lens(c, args.chunk_context, args.chunk_decodes),
        )
        for c in args.chunks
    ]
    shapes += [(f"prefix hit {text}", prefix_hit_lens(text)) for text in args.prefix_hits]
    rows = []
    for name, (q_lens, ctx_lens) in shapes:
        rules = mixed_row(cache, q_lens, ctx_lens)
        rows.append({"shape": name, "tile": "rules", "speedup": 1.0, **rules})
        for text, tile in args.tile_candidates:
            row = mixed_row(cache, q_lens, ctx_lens, tile=tile)
            rows.append({"shape": name, "tile": text, "speedup": rules["ms"] / row["ms"], **row})
    columns = [("shape", ""), ("tile", ""), ("keys", ""), ("ms", ".4f"), ("speedup", ".2f"),
               *CONFIG_COLUMNS]  # fmt: skip
    print_table("prefill over a cached context under other tiles (CUDA graph)", rows, columns)
    return rows


def run_split_rules(cache: PagedCache, args: argparse.Namespace, copy_gbs: float) -> list:
    """Decode per layer (in a graph of --graph-layers) under other split-K rules: for each
    rule the configuration choose_config then picks. A rule is P:K[:BN:ST][:down]: the cells timed
    (batch <= 16, context >= 4k) aim at P programs a multiprocessor (LONG_DECODE_PROGRAMS_PER_SM),
    splits of at least K keys (MIN_KEYS_PER_SPLIT), BN-key tiles ST stages deep when given
    (LONG_DECODE_TILE), and the split count rounded down with `down`."""
    from llm_worker.kernels import attention_config

    names = (
        "LONG_DECODE_PROGRAMS_PER_SM",
        "MIN_KEYS_PER_SPLIT",
        "SPLITS_ROUND_DOWN",
        "LONG_DECODE_TILE",
    )
    saved = [getattr(attention_config, name) for name in names]
    rule_tile = attention_config.LONG_DECODE_TILE
    rows = []
    try:
        for rule in args.split_rules:
            parts = rule.split(":")
            down = parts[-1] == "down"
            programs, min_keys, *tile = map(int, parts[:-1] if down else parts)
            attention_config.LONG_DECODE_PROGRAMS_PER_SM = programs
            attention_config.MIN_KEYS_PER_SPLIT = min_keys
            attention_config.SPLITS_ROUND_DOWN = down
            attention_config.LONG_DECODE_TILE = (tile[0], tile[1]) if tile else rule_tile
            for batch in [b for b in args.batches if b <= 16]:
                for ctx in [c for c in args.contexts if c >= 4096]:
                    row = decode_row(cache, batch, ctx, None, args.graph_layers, copy_gbs)
                    rows.append({"rule": rule, **row})
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(attention_config, name, value)
    columns = [("rule", ""), *LAYERED_COLUMNS]
    title = "decode under split rules (PROGRAMS_PER_SM:MIN_KEYS_PER_SPLIT[:BLOCK_N:STAGES][:down])"
    print_table(title, rows, columns)
    return rows


def chain_row(cache: PagedCache, batch: int, ctx: int, layers: int, copy_gbs: float) -> dict:
    """Decode attention timed inside the launches a decoder layer puts before it: per layer in
    a graph of `layers`, each its own QKV weight and K/V, the QKV matmul (cuBLAS), rotary in
    place, store_kv of the new rows, then attention, all but the matmul launched as `attention`
    is (PDL). `attention_us` is what attention adds to that chain: the chain's time less the
    same chain without it. Programmatic dependents overlap their start with the kernels before
    them, so this is the cost a model's decode step pays, which the attention-only graph of
    decode_row (`layer_us`) does not see."""
    from llm_worker.kernels.rotary import rotary_embedding
    from llm_worker.kernels.store_kv import store_kv

    layer = cache.layer
    heads, kv_heads, dim = layer.num_heads, layer.num_kv_heads, layer.head_dim
    calls = cache.layer_calls(batch, ctx, layers)
    block_tables, seq_lens = calls[0][3], calls[0][4]
    positions = (seq_lens - 1).long()  # the new token of each sequence, its slot in the cache
    rows = torch.arange(batch, device="cuda")
    slots = block_tables[rows, positions // layer.block_size].long() * layer.block_size
    slots += positions % layer.block_size
    hidden = torch.randn(batch, heads * dim, device="cuda", dtype=layer.dtype)
    width = (heads + 2 * kv_heads) * dim
    # [out, in], applied by F.linear as the model's nn.Linear applies it (cuBLAS picks its kernel
    # by the weight's layout: torch.mm on an [in, out] weight can run another one).
    weights = [torch.randn(width, heads * dim, device="cuda", dtype=layer.dtype) / 64
               for _ in calls]  # fmt: skip
    cos_sin = torch.randn(max(ctx, 4096), dim, device="cuda")
    config = auto_config(layer, batch, 1, ctx)
    scale = dim**-0.5

    def decoder_layer(i: int, with_attention: bool) -> None:
        qkv = F.linear(hidden, weights[i]).view(batch, heads + 2 * kv_heads, dim)
        query, key, value = (
            qkv[:, :heads],
            qkv[:, heads : heads + kv_heads],
            qkv[:, heads + kv_heads :],
        )
        rotary_embedding(positions, query, key, cos_sin, pdl=PDL)
        store_kv(key, value, calls[i][1], calls[i][2], slots, pdl=PDL)
        if with_attention:
            attention(query, *calls[i][1:], scale, 1, config)

    ms = {
        name: per_layer_ms(
            [lambda i=i, a=with_attention: decoder_layer(i, a) for i in range(len(calls))]
        )
        for name, with_attention in (("chain", True), ("no_attention", False))
    }
    alone = per_layer_ms([lambda a=args: attention(*a, scale, 1, config) for args in calls])
    kv_bytes = layer.kv_bytes(batch, ctx)
    attention_ms = ms["chain"] - ms["no_attention"]
    copy_ms = kv_bytes / 1e6 / copy_gbs  # these bytes at the copy bandwidth
    return {"batch": batch, "context": ctx, "layers": len(calls), "splits": config.num_splits,
            "chain_us": ms["chain"] * 1e3, "no_attention_us": ms["no_attention"] * 1e3,
            "attention_us": attention_ms * 1e3, "of_copy": copy_ms / attention_ms,
            "layer_us": alone * 1e3, "layer_of_copy": copy_ms / alone}  # fmt: skip


def run_chain(cache: PagedCache, args: argparse.Namespace, copy_gbs: float) -> list[dict]:
    rows = [chain_row(cache, batch, ctx, args.graph_layers, copy_gbs)
            for batch in args.batches for ctx in args.contexts
            if batch * ctx <= args.max_cache_tokens]  # fmt: skip
    columns = [("batch", "d"), ("context", "d"), ("layers", "d"), ("splits", "d"),
               ("chain_us", ".2f"), ("no_attention_us", ".2f"), ("attention_us", ".2f"),
               ("of_copy", ".3f"), ("layer_us", ".2f"), ("layer_of_copy", ".3f")]  # fmt: skip
    title = (f"decode attention in a decoder layer's launches (QKV matmul, rotary, store_kv, "
             f"attention), per layer in a graph of {args.graph_layers}; copy {copy_gbs:.0f} "
             f"GB/s")  # fmt: skip
    print_table(title, rows, columns)
    return rows


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
    parser.add_argument(
        "--graph-layers",
        type=int,
        default=32,
        help="decode also timed per layer in a graph of this many (1: not)",
    )
    parser.add_argument(
        "--chunks",
        type=ints,
        default=[96, 224, 480],
        help="chunked prefill: chunk sizes timed beside --chunk-decodes decodes",
    )
    parser.add_argument("--chunk-context", type=int, default=8192)
    parser.add_argument("--chunk-decodes", type=int, default=32)
    parser.add_argument(
        "--split-rules",
        type=lambda s: s.split(","),
        default=None,
        help="only time decode (batch <= 16, context >= 4k) under these "
        "PROGRAMS_PER_SM:MIN_KEYS_PER_SPLIT[:BLOCK_N:STAGES][:down] split-K rules, e.g. "
        "2:128,4:128:32:2,3:128:down (the tile defaults to the rule's; down: the split count "
        "rounds down, the programs fit one wave)",
    )
    parser.add_argument(
        "--decode-candidates",
        type=lambda s: [decode_candidate(c) for c in s.split(",")],
        default=None,
        help="decode configurations the sweep times, BLOCK_N:STAGES[:WARPS],... "
        "(default: a fixed list)",
    )
    parser.add_argument(
        "--prefill-candidates",
        type=lambda s: [prefill_tile(c) for c in s.split(",")],
        default=PREFILL_CANDIDATES,
        help="prefill configurations the sweep times, BLOCK_M:BLOCK_N:WARPS:STAGES[:MAXNREG],... "
        "(MAXNREG caps the registers a thread; default: a fixed list)",
    )
    parser.add_argument(
        "--tile-candidates",
        type=lambda s: [(text, prefill_tile(text)) for text in s.split(",")],
        default=None,
        help="only time prefill over a cached context (--chunks beside --chunk-decodes decodes, "
        "and --prefix-hits) under the rules' tile and under these BLOCK_M:BLOCK_N:WARPS:STAGES"
        "[:MAXNREG] tiles, e.g. 128:64:8:3,64:32:4:3:168",
    )
    parser.add_argument(
        "--prefix-hits",
        type=lambda s: s.split(","),
        default=["16x100+500", "64x100+500", "4x512+1536", "1x2000+6000"],
        help="with --tile-candidates: BATCHxNEW+PREFIX,... prompts of NEW tokens over a cached "
        "prefix of PREFIX tokens",
    )
    parser.add_argument(
        "--references",
        action="store_true",
        help="also time what a copy, a sum and torch SDPA reach on the bytes of each decode "
        "cell of batch <= 16 at context >= 4k (per layer, as layer_*)",
    )
    parser.add_argument(
        "--no-pdl",
        action="store_true",
        help="launch attention as a plain launch, not as a programmatic dependent of the kernel "
        "before it (the engine's default on Hopper and later)",
    )
    parser.add_argument(
        "--decoder-chain",
        action="store_true",
        help="only time decode attention inside a decoder layer's launches (QKV matmul, rotary, "
        "store_kv, attention), per layer in a graph of --graph-layers: what it adds there",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8"],
        default="auto",
        help="the cache's dtype: the query's (auto) or FP8 e4m3; bandwidth counts its bytes",
    )
    parser.add_argument(
        "--fp8-dot",
        choices=["f16", "query"],
        default="f16",
        help="with an FP8 cache: products in fp16 (the kernel's default) or in the query's dtype",
    )
    parser.add_argument(
        "--decode-only",
        action="store_true",
        help="only the decode table (and with --sweep, only its decode configurations)",
    )
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="only time --mixed-decodes decoding sequences at --mixed-contexts beside one "
        "--mixed-prefill-token prompt, in one launch and with the decodes apart",
    )
    parser.add_argument("--mixed-decodes", type=ints, default=[32, 128, 256])
    parser.add_argument("--mixed-contexts", type=ints, default=[512, 2048])
    parser.add_argument("--mixed-prefill", type=int, default=64)
    parser.add_argument(
        "--mixed-budget",
        type=int,
        default=8192,
        help="the prefill graphs' hints: the token budget and the model length",
    )
    parser.add_argument("--sweep", action="store_true", help="also time other configurations")
    parser.add_argument("--sweep-only", action="store_true", help="only the configuration sweep")
    parser.add_argument("--json", type=Path, help="write every row here")
    return parser.parse_args()


def main() -> None:
    global PDL
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py needs a CUDA GPU")
    PDL = not args.no_pdl and pdl_device(torch.device("cuda"))
    paged_attention_module.FP8_DOT_F16 = args.fp8_dot == "f16"
    layer = Layer(kv_dtype=FP8_DTYPE if args.kv_cache_dtype == "fp8" else Layer.dtype)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {triton.__version__}  programmatic dependent launch: {PDL}")  # fmt: skip
    copy_gbs = copy_bandwidth_gbs()
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s (read + write)")
    if args.tile_candidates or args.split_rules or args.decoder_chain or args.mixed:
        cache = PagedCache(layer, args.max_cache_tokens)  # one table only
        if args.mixed:
            key, rows = "mixed", run_mixed(cache, args)
        elif args.tile_candidates:
            key, rows = "tiles", run_tile_candidates(cache, args)
        elif args.decoder_chain:
            key, rows = "decoder_chain", run_chain(cache, args, copy_gbs)
        else:
            key, rows = "split_rules", run_split_rules(cache, args, copy_gbs)
        if args.json:
            args.json.write_text(json.dumps({"copy_gbs": copy_gbs, key: rows}, indent=1))
        return
    max_prefill = max(math.prod(map(int, s.split("x"))) for s in args.prefill)
    cache = PagedCache(layer, max(args.max_cache_tokens, max_prefill))
    results = {"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs, "pdl": PDL,
               "kv_cache_dtype": str(layer.kv_dtype), "fp8_dot": args.fp8_dot}  # fmt: skip
    args.shapes = [] if args.decode_only else [tuple(map(int, s.split("x"))) for s in args.prefill]
    sdpa = {(batch, seq): sdpa_ms(cache.layer, batch, seq) for batch, seq in args.shapes}
    if not args.sweep_only:
        results["decode"] = run_decode(cache, args, copy_gbs)
    if not (args.sweep_only or args.decode_only):
        results["prefill"] = run_prefill(cache, args.shapes, sdpa)
        results["chunks"] = run_chunks(cache, args)
        if args.references:
            results["references"] = run_references(cache.layer, args, copy_gbs, results["decode"])
    if args.sweep or args.sweep_only:
        results["sweep"] = run_sweep(cache, args, copy_gbs, sdpa)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
