"""Where the time of a paged-attention launch goes, kernel by kernel (torch profiler, CUPTI).

bench_kernels.py gives each case one figure; this splits it, for the cases that miss their
targets:

- launch floor: a Triton kernel that loads and stores one value per program, 512 programs,
  replayed --layers times from one CUDA graph: what any launch costs there.
- decode, per layer in a graph of --layers layers (each its own K/V, one shared block table, as
  in bench_kernels.py): the attention kernel's and the split-K merge's own GPU time, the rest of
  the layer (between kernels), and the attention kernel again with every sequence cut to 16 keys
  under the same launch configuration: its cost without streaming K/V. What is left over is the
  stream, given as a bandwidth.
- prefill: the kernel's GPU time against SDPA's own kernel, one launch replayed from a graph.

Shapes are bench_kernels.py's (Llama-3-8B attention, bf16, block size 16). Launches are plain,
not programmatic dependents (bench_kernels.py --no-pdl): as one, a kernel's GPU time would count
its wait for the kernel before it. Needs CUDA.

    python scripts/profile_attention.py
    python scripts/profile_attention.py --decode 1x16384,4x4096 --prefill 16x512
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kernels as bk

from llm_worker.kernels.paged_attention import paged_attention_with_config


@triton.jit
def _one_value(src_ptr, dst_ptr):
    pid = tl.program_id(0)
    tl.store(dst_ptr + pid, tl.load(src_ptr + pid % 4))


def kernel_times(fn: Callable[[], None], reps: int = 20) -> tuple[float, dict[str, float]]:
    """(ms of one graph replay by do_bench, {kernel name: mean GPU us per launch})."""
    graph = bk.capture(fn)
    ms = bk.bench_ms(graph.replay)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(event.name, [0, 0.0])
            entry[0] += 1
            entry[1] += event.device_time
    return ms, {name: total / count for name, (count, total) in totals.items()}


def pick(times: dict[str, float], fragment: str) -> float:
    return sum(us for name, us in times.items() if fragment in name)


def launch_floor(layers: int) -> None:
    src = torch.zeros(4, dtype=torch.int32, device="cuda")
    dsts = [torch.empty(512, dtype=torch.int32, device="cuda") for _ in range(layers)]
    ms, times = kernel_times(lambda: [_one_value[(512,)](src, dst) for dst in dsts])
    print(f"launch floor (one load a program, 512 programs): {ms * 1e3 / layers:.2f} us a "
          f"launch in the graph, {pick(times, '_one_value'):.2f} us of GPU time")  # fmt: skip


def decode_split(cache: bk.PagedCache, batch: int, ctx: int, layers: int, copy_gbs: float) -> None:
    layer = cache.layer
    config = bk.auto_config(layer, batch, 1, ctx)
    scale = layer.head_dim**-0.5
    calls = cache.layer_calls(batch, ctx, layers)
    n = len(calls)

    def step() -> None:
        for args in calls:
            paged_attention_with_config(*args, scale, 1, config)

    ms, times = kernel_times(step)
    layer_us = ms * 1e3 / n
    attention, merge = pick(times, "paged_attention"), pick(times, "merge_splits")
    seq_lens = calls[0][4]  # shared by every layer
    full = seq_lens.clone()
    seq_lens.fill_(16)  # the same launch, 16 keys a sequence: no stream
    try:
        _, short_times = kernel_times(step)
    finally:
        seq_lens.copy_(full)
    fixed = pick(short_times, "paged_attention")
    kv_bytes = layer.kv_bytes(batch, ctx)
    stream_gbs = kv_bytes / (attention - fixed) / 1e3
    of_copy = kv_bytes / layer_us / 1e3 / copy_gbs
    print(
        f"decode {batch} x {ctx} ({config.num_splits} splits, {config.block_n}-key tiles, "
        f"{n} layers): {layer_us:.2f} us a layer ({of_copy:.3f} of copy) = attention "
        f"{attention:.2f} + merge {merge:.2f} + between kernels "
        f"{layer_us - attention - merge:.2f}; attention with 16 keys {fixed:.2f}, so the "
        f"stream runs at {stream_gbs:.0f} GB/s ({stream_gbs / copy_gbs:.2f} of copy)"
    )


def prefill_split(cache: bk.PagedCache, batch: int, seq: int) -> None:
    layer = cache.layer
    args = cache.batch([seq] * batch, [seq] * batch)
    new_kv = cache.step_kv(batch * seq)
    config = bk.auto_config(layer, batch, seq, seq)
    scale = layer.head_dim**-0.5
    _, times = kernel_times(lambda: paged_attention_with_config(*args, scale, seq, config, *new_kv))
    _, sdpa = kernel_times(bk.sdpa_call(layer, batch, seq))
    ours = pick(times, "paged_attention")
    theirs = max(sdpa.items(), key=lambda item: item[1])
    print(f"prefill {batch} x {seq} ({config.block_m} x {config.block_n} tiles, "
          f"{config.num_stages} stages): kernel {ours:.1f} us, SDPA's {theirs[0][:48]} "
          f"{theirs[1]:.1f} us: {theirs[1] / ours:.3f} of SDPA")  # fmt: skip


def shapes(text: str) -> list[tuple[int, int]]:
    return [(int(b), int(s)) for b, s in (item.split("x") for item in text.split(","))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decode", type=shapes, default=shapes("1x4096,1x16384,4x4096,1x32768"),
                        help="BATCHxCONTEXT,... decode cases")  # fmt: skip
    parser.add_argument("--prefill", type=shapes, default=shapes("16x512,4x2048,1x4096"),
                        help="BATCHxSEQ,... causal prefill shapes")  # fmt: skip
    parser.add_argument("--layers", type=int, default=32, help="layers a decode graph replays")
    parser.add_argument("--cache-tokens", type=int, default=1 << 23, help="cache size in tokens")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_attention.py needs a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {triton.__version__}")  # fmt: skip
    copy_gbs = bk.copy_bandwidth_gbs()
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s")
    launch_floor(args.layers)
    cache = bk.PagedCache(bk.Layer(), args.cache_tokens)
    for batch, ctx in args.decode:
        decode_split(cache, batch, ctx, args.layers, copy_gbs)
    for batch, seq in args.prefill:
        prefill_split(cache, batch, seq)


if __name__ == "__main__":
    main()
