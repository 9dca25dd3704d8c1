"""Random paged-cache batches for the kernel tests: scattered blocks, NaN wherever no token is."""

import dataclasses
from dataclasses import dataclass

import torch

from llm_worker.kernels.attention_config import AttentionConfig
from llm_worker.kernels.reference import quantize_kv

# Launch configurations the rules pick on GPUs (and some they could), for the CUDA tests.
GPU_CONFIGS = [
    AttentionConfig(block_m=16, block_n=64, num_splits=7, num_warps=4, num_stages=3),
    AttentionConfig(block_m=128, block_n=64, num_splits=3, num_warps=8, num_stages=3),
    AttentionConfig(block_m=64, block_n=128, num_splits=1, num_warps=4, num_stages=2),
    # Every key tile of a split in one masked loop, over decode and prefill tiles alike.
    AttentionConfig(16, 32, 7, 4, 3, one_pass=True),
    AttentionConfig(64, 32, 3, 4, 3, one_pass=True),
    # ... with a split's block ids loaded at once: the longest split here (4,099 keys in
    # 7) holds 608 keys, in one chunk of 640, or in seven of 96, five stages deep.
    AttentionConfig(16, 32, 7, 4, 3, one_pass=True, ids_chunk_keys=640),
    AttentionConfig(16, 32, 7, 4, 5, one_pass=True, ids_chunk_keys=96),
    # Register caps (ptxas .maxnreg) that fit three and two programs a multiprocessor.
    AttentionConfig(64, 32, 1, 4, 3, max_registers=168),
    AttentionConfig(128, 32, 3, 8, 3, max_registers=128),
]


@dataclass(frozen=True)
class PagedBatch:
    query: torch.Tensor  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    cu_seqlens_q: torch.Tensor  # [num_seqs + 1] int32
    max_seqlen_q: int
    max_seqlen_k: int
    new_slots: torch.Tensor | None = None  # [num_real_tokens] int64, each new token's slot

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.seq_lens,
            self.cu_seqlens_q,
        )

    def num_real_tokens(self) -> int:
        return int(self.cu_seqlens_q[-1])

    def new_kv(self, padding: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's K and V as store_kv received them (copies of the new tokens' cache
        rows), with `padding` NaN rows after the real tokens, as a CUDA graph pads a batch."""
        assert self.new_slots is not None
        out = []
        for cache in (self.k_cache, self.v_cache):
            rows = cache.flatten(0, 1)[self.new_slots]
            pad = torch.full((padding, *rows.shape[1:]), float("nan"), dtype=rows.dtype,
                             device=rows.device)  # fmt: skip
            out.append(torch.cat([rows, pad]))
        return out[0], out[1]

    def poison_new_slots(self) -> None:
        """NaN over the cache rows of the new tokens of sequences with several: a prefill tile
        must then take them from new_kv(). A one-token sequence's row stays: beside prefill
        tiles, many of them are computed apart by a decode launch, which reads the cache, where
        store_kv has put the same values."""
        assert self.new_slots is not None
        q_lens = self.cu_seqlens_q.diff().cpu()
        several = torch.repeat_interleave(q_lens > 1, q_lens)
        for cache in (self.k_cache, self.v_cache):
            cache.flatten(0, 1)[self.new_slots[several.to(self.new_slots.device)]] = float("nan")


def make_paged_batch(
    seqs: list[tuple[int, int]],  # (context length incl. new tokens, new tokens) per sequence
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> PagedBatch:
    """Blocks of all sequences are shuffled over the cache; the unused ones, the tail of each last
    block and the spare block-table entries (which point at a NaN block) hold NaN, so a kernel
    that reads past a sequence's context gives NaN instead of a plausible number."""
    blocks_per_seq = [-(-ctx // block_size) for ctx, _ in seqs]
    num_blocks = sum(blocks_per_seq) + 2
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    v_cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    order = torch.randperm(num_blocks - 1).tolist()
    nan_block = num_blocks - 1
    width = max(blocks_per_seq, default=0) + 1
    block_tables = torch.full((len(seqs), width), nan_block, dtype=torch.int32)
    slots, new_slots = [], []
    for i, (ctx, q_len) in enumerate(seqs):
        ids = torch.tensor([order.pop() for _ in range(blocks_per_seq[i])], dtype=torch.int32)
        block_tables[i, : len(ids)] = ids
        positions = torch.arange(ctx)
        slots.append(ids[positions // block_size].long() * block_size + positions % block_size)
        new_slots.append(slots[-1][ctx - q_len :])
    all_slots = torch.cat(slots).to(device) if slots else torch.zeros(0, dtype=torch.long)
    for cache in (k_cache, v_cache):
        rows = torch.randn(len(all_slots), num_kv_heads, head_dim, device=device)
        cache.view(-1, num_kv_heads, head_dim)[all_slots] = rows.to(dtype)
    q_lens = [q for _, q in seqs]
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(sum(q_lens), num_heads, head_dim, device=device).to(dtype)
    return PagedBatch(
        query=query,
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=block_tables.to(device),
        seq_lens=torch.tensor([ctx for ctx, _ in seqs], dtype=torch.int32, device=device),
        cu_seqlens_q=cu.to(device),
        max_seqlen_q=max(q_lens, default=0),
        max_seqlen_k=max((ctx for ctx, _ in seqs), default=0),
        new_slots=torch.cat([torch.zeros(0, dtype=torch.long), *new_slots]).to(device),
    )


def fp8_batch(batch: PagedBatch, k_scale: float, v_scale: float) -> PagedBatch:
    """The same batch over an FP8 (e4m3) cache holding K / k_scale and V / v_scale, as store_kv
    writes them; NaN stays NaN."""
    k8 = quantize_kv(batch.k_cache, torch.float8_e4m3fn, k_scale)
    v8 = quantize_kv(batch.v_cache, torch.float8_e4m3fn, v_scale)
    return dataclasses.replace(batch, k_cache=k8, v_cache=v8)
