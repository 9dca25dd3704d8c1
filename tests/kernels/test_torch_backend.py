"""The CPU `torch` backend against the per-sequence oracle: decode, short (verification) and long
queries mixed in one batch, GQA and not."""

import pytest
import torch

from llm_worker.kernels import reference
from llm_worker.models import torch_attention
from tests.kernels.paged_cases import make_paged_batch


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("block_size", [4, 16])
def test_mixed_query_lengths_match_the_oracle(group: int, block_size: int) -> None:
    torch.manual_seed(group * 100 + block_size)
    seqs = [(1, 1), (37, 1), (20, 5), (9, 9), (64, 32), (70, 33), (45, 40), (16, 3), (5, 2)]
    batch = make_paged_batch(seqs, num_heads=2 * group, num_kv_heads=2, head_dim=32,
                             block_size=block_size)  # fmt: skip
    # The engine's cache is zero-initialised: blocks past a context hold numbers, never NaN.
    k_cache, v_cache = batch.k_cache.nan_to_num(0.0), batch.v_cache.nan_to_num(0.0)
    args = (batch.query, k_cache, v_cache, batch.block_tables, batch.seq_lens,
            batch.cu_seqlens_q, 0.2, batch.max_seqlen_q, batch.max_seqlen_k)  # fmt: skip
    expected = reference.paged_attention(*args)
    got = torch_attention.paged_attention(*args)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
