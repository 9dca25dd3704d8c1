"""Host side of `paged_attention`: input checks, and the launch configuration (tile sizes, warps
and the split-K factor).

The configuration comes from shapes and the max_seqlen hints alone (never from tensor contents),
so a CUDA graph captured with fixed upper bounds keeps one configuration, and the kernel stays
correct when the hints over-estimate: they only change speed.
"""

import functools
from dataclasses import dataclass

import torch
import triton

from llm_worker.kernels.reference import FP8_KV_DTYPES

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The launch rules below. The sweeps that chose their numbers (per layer in a 32-layer graph, of
# copy bandwidth for decode, of SDPA for prefill) are indexed in docs/benchmarks.md, "How the
# attention rules were chosen".
#
# Split-K runs when one program per (query tile, KV head) leaves multiprocessors idle, and then
# aims at this many programs per multiprocessor: at batch 1 only many short splits keep every
# multiprocessor streaming.
PROGRAMS_PER_SM = 4
# A split shorter than this spends more on its partial write and the merge than it saves.
MIN_KEYS_PER_SPLIT = 128
# True: the split count rounds down, so the programs fit PROGRAMS_PER_SM a multiprocessor in one
# wave; False: up, at least that many (bench_kernels.py --split-rules P:K:down measures it).
SPLITS_ROUND_DOWN = False
MAX_SPLITS = 64
# Split-K for decode and verification tiles (up to this many rows) by the rule above. Prefill
# tiles split only as a chunk over a long cached context: a step of a few hundred new tokens
# beside decodes (chunked prefill) fills a few dozen row tiles, each walking thousands of keys
# while most multiprocessors idle. With at least CHUNK_SPLIT_MIN_KEYS keys and four times as
# many keys as query tokens, the keys split over what the token tiles leave idle, at least
# MIN_KEYS_PER_CHUNK_SPLIT keys a split; a prefill without much context keeps one pass (its
# partials would cost more to write and merge than the idle multiprocessors are worth).
MAX_SPLIT_ROWS = 64
CHUNK_SPLIT_MIN_KEYS = 2048
MIN_KEYS_PER_CHUNK_SPLIT = 1024
# Prefill runs 128-row tiles on 8 warps (two warpgroups of 64 rows) and takes the first of
# these (keys per tile, pipeline stages) whose buffers fit the shared memory. 64-key tiles three
# stages deep keep two tiles in flight in 128 KiB; 128-key tiles take 224 KiB and 254 registers
# a thread and ran slower, and a fourth stage added nothing.
PREFILL_TILES = ((64, 3), (64, 2))
# A whole prefill launch shape, as the rules below and choose_config's prefill_tile give it:
# (block_m, num_warps, block_n, num_stages, max_registers).
PrefillTile = tuple[int, int, int, int, int | None]
# When this step's keys come from its own K/V by TMA (`step_kv`), only the cached prefix is
# gathered, and from STEP_KV_LONG_KEYS keys 128-key tiles three stages deep pay. Up to
# STEP_KV_SHORT_KEYS keys programs are short and their start-up wants hiding behind other
# programs: 64-row tiles on 4 warps stream 32-key tiles three stages deep (65 KiB) under a cap
# of 168 registers a thread, which fits three programs a multiprocessor (uncapped, ptxas takes
# 176 and two fit). One sequence of about 1k tokens alone loses a little that way; batches of
# several gain.
STEP_KV_LONG_KEYS = 2048
STEP_KV_LONG_TILES = ((128, 3), *PREFILL_TILES)
STEP_KV_SHORT_KEYS = 1024
STEP_KV_SHORT_TILE: PrefillTile = (64, 4, 32, 3, 168)
# Prefill tiles that gather every key through the block table (prompts over a prefix-cache hit)
# over at most GATHER_SHORT_KEYS keys, enough of them to fill the GPU once, stream 32-key tiles
# three stages deep under a cap of 128 registers: 80 KiB, two programs of 8 warps a
# multiprocessor, where the 64-key tiles' 128 KiB fit one. With fewer tiles than
# multiprocessors the second program has nothing to hide, and over longer ranges (a chunk over a
# long prefix) the smaller tile loses, so those keep 64-key tiles.
GATHER_SHORT_KEYS = 1024
GATHER_SHORT_TILE: PrefillTile = (128, 8, 32, 3, 128)
# Step K/V by TMA only where new keys are a good part of the range: with a long cached prefix
# (a chunk over 8k keys) the launch is mostly the block-table gather, which runs slower in the
# kernel variant that also reads by TMA.
STEP_KV_MAX_KEYS_PER_QUERY = 2
# Decode and verification tiles stream K/V with two pipeline stages, except when a few splits
# each stream a long key range: there a third stage keeps enough bytes in flight. Unsplit
# launches (enough programs already) and many short splits do better with two.
DECODE_DEEP_MAX_SPLITS = 8
DECODE_DEEP_MIN_KEYS = 4096
# Split decode tiles (one token a sequence, up to 16 rows) whose splits hold at least
# SPLIT_DECODE_MIN_KEYS keys stream 32-key tiles two stages deep instead, which streamed faster
# at every such cell swept; shorter splits lost that way and keep 64-key tiles. Verification
# tiles keep the rules above.
SPLIT_DECODE_MAX_ROWS = 16
SPLIT_DECODE_MIN_KEYS = 192
SPLIT_DECODE_TILE = (32, 2)
# From LONG_DECODE_MIN_KEYS keys on, split decode tiles aim at LONG_DECODE_PROGRAMS_PER_SM
# programs a multiprocessor instead, each streaming 32-key tiles three stages deep: half the
# programs, twice the keys in flight each, so the fixed cost of a program (sequence bounds, block
# ids, the first key tile, the partial store) and the merge's inputs are paid half as often.
# Two or four stages, 64-key tiles, and 2 or 8 warps all streamed slower at these lengths.
LONG_DECODE_MIN_KEYS = 4096
LONG_DECODE_PROGRAMS_PER_SM = 2
LONG_DECODE_TILE = (32, 3)
# Split decode tiles whose splits hold ONE_PASS_MIN_TILES key tiles or more, and at most
# ONE_PASS_MAX_SPLIT_KEYS keys, walk them in one loop with every key tile masked
# (`AttentionConfig.one_pass`). With two loops (the unmasked tiles, then the masked tail) every
# program pays for the second loop, its tail's block-id load and the software pipeline's set-up
# and drain, even when the tail is empty: in a short split that is worth more than the masks.
# Splits of two tiles gain nothing, and longer splits keep two loops, which measured faster
# there than one masked loop.
ONE_PASS_MIN_TILES = 3
ONE_PASS_MAX_SPLIT_KEYS = 2048
# One-pass tiles whose splits hold more than PRELOAD_OVER_SPLIT_KEYS keys, or at most
# PRELOAD_SHALLOW_MAX_TILES key tiles two stages deep, load the block ids of the whole split
# before the loop (`AttentionConfig.ids_chunk_keys`), where the loop otherwise loads the next
# tile's as it goes: then no load inside the loop feeds a K/V address, which long splits need
# to beat two loops. Short splits three stages deep, and two stages over more tiles, keep
# loading as they go: there each tile's gather from the preloaded ids costs more than it saves.
PRELOAD_OVER_SPLIT_KEYS = 512
PRELOAD_SHALLOW_MAX_TILES = 8
# Unsplit decode tiles over an FP8 cache stream 128-key tiles two stages deep: a key tile then
# holds the bytes of a 64-key bf16 one, and streamed fastest of the FP8 tiles swept
# (docs/benchmarks.md, "Decode over an FP8 (e4m3) cache").
FP8_DECODE_TILE = (128, 2)
# The interpreter has no multiprocessors; a small number keeps split-K reachable in CPU tests.
INTERPRETER_NUM_SMS = 4


@dataclass(frozen=True)
class AttentionConfig:
    block_m: int  # rows of a query tile (query tokens x heads of one KV head)
    block_n: int  # keys per inner iteration
    num_splits: int  # split-K factor; 1 writes the output directly
    num_warps: int
    num_stages: int
    # Prefill tiles read this step's keys from the step's K/V by TMA, when the caller passes them
    # and the device has TMA; else (and always for decode tiles) every key from the cache.
    step_kv: bool = True
    # Registers a thread may use (ptxas .maxnreg), None: as many as ptxas likes. Uncapped, ptxas
    # can take a few more than another program a multiprocessor would leave (a 64-row prefill
    # tile of 32 keys: 176, where three programs fit at 168); capped, that program fits.
    max_registers: int | None = None
    # Split decode: every key tile of a split in one masked loop, not the unmasked tiles and
    # then the masked tail in a second (ignored by tiles that read step K/V by TMA).
    one_pass: bool = False
    # With one_pass: the block ids of this many keys (a multiple of block_n; the rule gives a
    # split's) are loaded at once before their keys, not a key tile's a tile ahead (0).
    ids_chunk_keys: int = 0

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")
        if not 1 <= self.num_splits <= 1024:
            raise ValueError(f"num_splits must be in [1, 1024], got {self.num_splits}")
        if self.max_registers is not None and not 24 <= self.max_registers <= 255:
            raise ValueError(f"max_registers must be in [24, 255], got {self.max_registers}")
        if self.ids_chunk_keys and (not self.one_pass or self.ids_chunk_keys % self.block_n):
            raise ValueError(
                "ids_chunk_keys needs one_pass and must be a multiple of block_n, got "
                f"{self.ids_chunk_keys} with one_pass={self.one_pass}, block_n={self.block_n}"
            )


@functools.cache
def _device_limits(device_index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(device_index)
    optin = props.shared_memory_per_block_optin  # type: ignore[attr-defined]  # torch 2.11 stubs lack it
    return props.multi_processor_count, optin


def device_limits(device: torch.device) -> tuple[int, int]:
    """(multiprocessors, opt-in shared memory bytes per program) of a CUDA device."""
    if device.type != "cuda":
        return INTERPRETER_NUM_SMS, 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_limits(index)


def choose_config(
    num_seqs: int,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dtype: torch.dtype,
    device: torch.device,
    num_tokens: int | None = None,
    prefill_tile: PrefillTile | None = None,
    fp8_cache: bool = False,
) -> AttentionConfig:
    """Decode-like launches get small row tiles and split-K; prefill gets big row tiles, split
    too when a few of them (`num_tokens` query tokens in all, padding included) face a long
    context. `prefill_tile` replaces the tile of launches the rules give prefill tiles (128
    rows), the split count then following from it (sweeps). `dtype` is the query's;
    `fp8_cache` says the cache holds e4m3."""
    rows = max(1, max_seqlen_q) * group
    wide = dtype == torch.float32 or head_dim > 128  # register and shared-memory budget
    block_m = min(triton.next_power_of_2(max(rows, 16)), 64 if wide else 128)
    num_sms, shared_memory = device_limits(device)
    block_n = 32 if wide else 64
    num_warps = 8 if block_m >= 128 else 4
    num_stages = 2
    max_registers = None
    itemsize = torch.finfo(dtype).bits // 8

    def fits(keys: int, stages: int) -> bool:
        return shared_memory_bytes(block_m, keys, head_dim, itemsize, stages) <= shared_memory

    def row_tiles(rows_per_tile: int) -> int:
        return num_seqs * num_kv_heads * triton.cdiv(rows, rows_per_tile)

    step_kv = max_seqlen_k <= STEP_KV_MAX_KEYS_PER_QUERY * max(1, max_seqlen_q)
    if block_m >= 128:
        candidates = (
            STEP_KV_LONG_TILES if step_kv and max_seqlen_k >= STEP_KV_LONG_KEYS else PREFILL_TILES
        )
        block_n, num_stages = next((t for t in candidates if fits(*t)), candidates[-1])
        rule_tile = None
        if step_kv and max_seqlen_k <= STEP_KV_SHORT_KEYS:
            rule_tile = STEP_KV_SHORT_TILE
        elif not step_kv and max_seqlen_k <= GATHER_SHORT_KEYS and row_tiles(block_m) >= num_sms:
            rule_tile = GATHER_SHORT_TILE
        tile = prefill_tile or rule_tile
        if tile is not None:
            block_m, num_warps, block_n, num_stages, max_registers = tile
    tiles = row_tiles(block_m)
    num_splits = 1
    decode_tile = block_m <= SPLIT_DECODE_MAX_ROWS and not wide
    long_decode = decode_tile and max_seqlen_k >= LONG_DECODE_MIN_KEYS
    if rows <= MAX_SPLIT_ROWS and tiles < num_sms:
        slots = (LONG_DECODE_PROGRAMS_PER_SM if long_decode else PROGRAMS_PER_SM) * num_sms
        num_splits = min(
            max(1, slots // tiles) if SPLITS_ROUND_DOWN else triton.cdiv(slots, tiles),
            max(1, max_seqlen_k // MIN_KEYS_PER_SPLIT),
            MAX_SPLITS,
        )
    elif (
        rows > MAX_SPLIT_ROWS
        and num_tokens is not None
        and max_seqlen_k >= max(CHUNK_SPLIT_MIN_KEYS, 4 * max_seqlen_q)
    ):
        token_tiles = triton.cdiv(num_tokens * group, block_m) * num_kv_heads
        num_splits = max(
            1,
            min(num_sms // token_tiles, max_seqlen_k // MIN_KEYS_PER_CHUNK_SPLIT, MAX_SPLITS),
        )
    deep = 1 < num_splits <= DECODE_DEEP_MAX_SPLITS and max_seqlen_k >= DECODE_DEEP_MIN_KEYS
    long_splits = num_splits > 1 and max_seqlen_k // num_splits >= SPLIT_DECODE_MIN_KEYS
    if long_decode and num_splits > 1:
        block_n, num_stages = LONG_DECODE_TILE
    elif long_splits and decode_tile:
        block_n, num_stages = SPLIT_DECODE_TILE
    elif deep and not wide and fits(block_n, 3):
        num_stages = 3
    elif fp8_cache and decode_tile and num_splits == 1:
        block_n, num_stages = FP8_DECODE_TILE
    # The kernel gives each split cdiv(key tiles, num_splits) whole key tiles, so a count that
    # does not divide the tiles leaves its last splits empty (batch 4 x 4k: 17 splits of 8 tiles
    # of 128, the 17th with none): drop those, their programs and their partials.
    key_tiles = triton.cdiv(max(1, max_seqlen_k), block_n)
    num_splits = triton.cdiv(key_tiles, triton.cdiv(key_tiles, num_splits))
    one_pass, ids_chunk_keys = split_walk(
        block_n, num_splits, num_stages, max_seqlen_k, decode_tile
    )
    return AttentionConfig(
        block_m, block_n, num_splits, num_warps, num_stages, step_kv, max_registers,
        one_pass=one_pass, ids_chunk_keys=ids_chunk_keys,
    )  # fmt: skip


def split_walk(
    block_n: int, num_splits: int, num_stages: int, max_seqlen_k: int, decode_tile: bool
) -> tuple[bool, int]:
    """(one_pass, ids_chunk_keys) of a launch with these key tiles and splits: how a split
    decode tile (`decode_tile`: one query token, or a few, a sequence) walks its split's keys
    (ONE_PASS_* and PRELOAD_* above). Split-K sweeps that replace a configuration's tile or
    split count ask again here, as the ids chunk is one split's keys."""
    split_tiles = triton.cdiv(triton.cdiv(max(1, max_seqlen_k), block_n), num_splits)
    split_keys = split_tiles * block_n
    one_pass = (
        decode_tile
        and num_splits > 1
        and split_tiles >= ONE_PASS_MIN_TILES
        and split_keys <= ONE_PASS_MAX_SPLIT_KEYS
    )
    shallow = num_stages == 2 and split_tiles <= PRELOAD_SHALLOW_MAX_TILES
    preload = one_pass and (split_keys > PRELOAD_OVER_SPLIT_KEYS or shallow)
    return one_pass, split_keys if preload else 0


def shared_memory_bytes(
    block_m: int, block_n: int, head_dim: int, itemsize: int, num_stages: int
) -> int:
    """The query tile plus num_stages K and V tiles, as Triton's pipeline allocates them."""
    return (block_m + 2 * num_stages * block_n) * head_dim * itemsize


def check_inputs(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
) -> None:
    if query.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "expected query [num_tokens, num_heads, head_dim] and equal k/v caches "
            f"[num_blocks, block_size, num_kv_heads, head_dim], got {list(query.shape)}, "
            f"{list(k_cache.shape)}, {list(v_cache.shape)}"
        )
    cache_dtypes = (query.dtype, *FP8_KV_DTYPES)
    if (
        query.dtype not in SUPPORTED_DTYPES
        or k_cache.dtype != v_cache.dtype
        or k_cache.dtype not in cache_dtypes
    ):
        raise ValueError(
            f"query must be one of {SUPPORTED_DTYPES}, and k_cache and v_cache of its dtype or "
            f"FP8 (e4m3), got {query.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    if head_dim != k_cache.shape[3] or head_dim & (head_dim - 1) or not 16 <= head_dim <= 256:
        raise ValueError(
            f"head_dim must be a power of two in [16, 256] and equal in query and cache, got "
            f"{head_dim} and {k_cache.shape[3]}"
        )
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if query.stride(2) != 1 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("query must be contiguous in head_dim and k/v caches contiguous")
    num_seqs = seq_lens.shape[0]
    for name, t, shape in (
        ("block_tables", block_tables, (num_seqs, block_tables.shape[-1])),
        ("seq_lens", seq_lens, (num_seqs,)),
        ("cu_seqlens_q", cu_seqlens_q, (num_seqs + 1,)),
    ):
        if t.dtype != torch.int32 or tuple(t.shape) != shape or t.stride(-1) != 1:
            raise ValueError(f"{name} must be int32 {list(shape)} with unit last stride, got "
                             f"{t.dtype} {list(t.shape)} strides {t.stride()}")  # fmt: skip
    devices = {t.device for t in (query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
