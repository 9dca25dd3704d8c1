"""Step inputs built with numpy and packed buffers equal the plain list-built ones."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_worker.engine.block_manager import cdiv
from llm_worker.engine.cuda_graphs import graph_batch_sizes, prefill_token_buckets
from llm_worker.engine.sequence import ScheduledSequence, Sequence, SequenceMetrics
from llm_worker.engine.step_inputs import (
    InputUploader,
    build_host_inputs,
    pad_inputs,
)
from llm_worker.schemas import SamplingParams
from tests.oracle import engine_for, greedy, make_tiny_checkpoint

BLOCK_SIZE = 4


def list_built(scheduled: list[ScheduledSequence], bs: int) -> dict[str, list]:
    """The step inputs as the runner built them before numpy: one Python loop over tokens."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    seq_lens: list[int] = []
    cu_q = [0]
    sample_idx: list[int] = []
    for item in scheduled:
        start, end = item.start, item.start + item.num_new_tokens
        ids += item.seq.token_ids[start:end]
        positions += range(start, end)
        slots += [item.seq.block_table[p // bs] * bs + p % bs for p in range(start, end)]
        seq_lens.append(end)
        cu_q.append(cu_q[-1] + item.num_new_tokens)
        if item.samples:
            sample_idx.append(cu_q[-1] - 1)
    width = max(cdiv(n, bs) for n in seq_lens)
    tables = [
        s.seq.block_table[:width] + [0] * (width - min(width, len(s.seq.block_table)))
        for s in scheduled
    ]
    return dict(input_ids=ids, positions=positions, slot_mapping=slots, seq_lens=seq_lens,
                cu_seqlens_q=cu_q, block_tables=tables, sample_idx=sample_idx)  # fmt: skip


def random_step(rng: random.Random, num_seqs: int, decode: bool) -> list[ScheduledSequence]:
    scheduled = []
    for i in range(num_seqs):
        num_tokens = rng.randint(1, 40)
        token_ids = [rng.randint(0, 999) for _ in range(num_tokens)]
        seq = Sequence(
            request_id=str(i),
            token_ids=token_ids,
            num_prompt_tokens=num_tokens,
            params=SamplingParams(),
            metrics=SequenceMetrics(arrival_time=0.0),
        )
        # Reserved blocks may run past the tokens (admission reserves whole prompts).
        num_blocks = cdiv(num_tokens, BLOCK_SIZE) + rng.randint(0, 2)
        seq.block_table = rng.sample(range(100), num_blocks)
        start = num_tokens - 1 if decode else rng.randint(0, num_tokens - 1)
        num_new = 1 if decode else rng.randint(1, num_tokens - start)
        scheduled.append(ScheduledSequence(seq, num_new, start))
    return scheduled


@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_numpy_inputs_equal_list_built_inputs(seed: int, decode: bool) -> None:
    rng = random.Random(seed)
    scheduled = random_step(rng, rng.randint(1, 9), decode)
    expected = list_built(scheduled, BLOCK_SIZE)
    host = build_host_inputs(scheduled, BLOCK_SIZE)
    inputs = InputUploader(torch.device("cpu")).upload(host)
    got = {
        "input_ids": inputs.input_ids, "positions": inputs.positions,
        "slot_mapping": inputs.meta.slot_mapping, "seq_lens": inputs.meta.seq_lens,
        "cu_seqlens_q": inputs.meta.cu_seqlens_q, "block_tables": inputs.meta.block_tables,
        "sample_idx": inputs.sample_idx,
    }  # fmt: skip
    for name, values in expected.items():
        assert got[name].tolist() == values, name
    assert inputs.input_ids.dtype == inputs.meta.slot_mapping.dtype == torch.int64
    assert inputs.meta.block_tables.dtype == inputs.meta.seq_lens.dtype == torch.int32
    assert inputs.meta.max_seqlen_q == max(s.num_new_tokens for s in scheduled)
    assert inputs.meta.max_seqlen_k == max(expected["seq_lens"])


def test_uploads_into_given_buffers_do_not_alias_the_host_arrays() -> None:
    scheduled = random_step(random.Random(7), 5, decode=True)
    host = build_host_inputs(scheduled, BLOCK_SIZE, table_width=16)
    out64, out32 = torch.zeros(64, dtype=torch.int64), torch.zeros(200, dtype=torch.int32)
    inputs = InputUploader(torch.device("cpu")).upload(host, out64, out32)
    assert inputs.meta.block_tables.shape == (5, 16)
    assert inputs.meta.block_tables.data_ptr() >= out32.data_ptr()
    assert inputs.input_ids.tolist() == [s.seq.token_ids[-1] for s in scheduled]


def test_decode_padding_writes_nowhere_and_keeps_real_rows() -> None:
    scheduled = random_step(random.Random(3), 3, decode=True)
    host = build_host_inputs(scheduled, BLOCK_SIZE, table_width=12)
    padded = pad_inputs(host, 8, 8, max_seqlen_q=1, max_seqlen_k=48)  # as decode graphs pad
    assert padded.slot_mapping[:3].tolist() == host.slot_mapping.tolist()
    assert padded.slot_mapping[3:].tolist() == [-1] * 5
    assert padded.seq_lens[3:].tolist() == [1] * 5
    assert padded.cu_seqlens_q.tolist() == list(range(9))
    assert np.array_equal(padded.block_tables[:3], host.block_tables)
    assert padded.block_tables.shape == (8, 12) and not padded.block_tables[3:].any()
    assert padded.max_seqlen_k == 48 and padded.max_seqlen_q == 1


def test_graph_batch_sizes() -> None:
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(6) == [1, 2, 4, 6]
    assert graph_batch_sizes(32) == [1, 2, 4, 8, 16, 24, 32]
    assert graph_batch_sizes(36) == [1, 2, 4, 8, 16, 24, 32, 36]


def test_padded_verification_step_keeps_the_real_rows(tmp_path: Path) -> None:
    """A verification-graph step: sequences with 0 to 4 drafts padded to 8 sequences of 5
    tokens (padding sequences and tokens that belong to no sequence) give the unpadded
    step's logits on the rows that are sampled."""
    engine = engine_for(make_tiny_checkpoint(tmp_path, "llama", 4, 2, 64), max_num_seqs=8)
    prompts = [[(3 * i + j) % 900 + 5 for j in range(9 + 7 * i)] for i in range(3)]
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, greedy(8, ignore_eos=True))
    engine.step()  # prefill: each sequence now has one pending token
    scheduled = []
    for n, seq in zip((0, 2, 4), engine.scheduler.running, strict=True):
        drafts = tuple(range(20, 20 + n))
        assert engine.block_manager.allocate(seq, seq.num_tokens + n)
        scheduled.append(ScheduledSequence(seq, 1 + n, seq.num_computed_tokens, drafts))
    runner = engine.runner
    want = runner.logits(scheduled)
    host = build_host_inputs(scheduled, runner.block_size, table_width=8)
    padded = pad_inputs(host, 8, 8 * 5, 5, 8 * runner.block_size)
    assert padded.cu_seqlens_q.tolist() == [0, 1, 4, 9, 10, 11, 12, 13, 14]
    assert padded.slot_mapping[9:].tolist() == [-1] * 31
    inputs = InputUploader(runner.device).upload(padded)
    hidden = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.meta)
    got = runner.model.compute_logits(hidden[inputs.sample_idx])
    assert want.shape == (1 + 3 + 5, runner.model.config.vocab_size)
    torch.testing.assert_close(got, want)


def test_padded_prefill_step_keeps_the_real_rows(tmp_path: Path) -> None:
    """A prefill-graph step: a prompt chunk mixed with decodes, padded to 8 sequences (the
    padding ones hold no token) and a 128-token bucket, gives the unpadded step's logits."""
    engine = engine_for(make_tiny_checkpoint(tmp_path, "llama", 4, 2, 64), max_num_seqs=8,
                        max_num_batched_tokens=40)  # fmt: skip
    for i in range(3):
        prompt = [(5 * i + j) % 900 + 5 for j in range(30 + 20 * i)]
        engine.add_request(str(i), prompt, greedy(8, ignore_eos=True))
    plan = engine.scheduler.schedule()  # one prompt and a chunk of the next
    assert [s.num_new_tokens for s in plan.scheduled] == [30, 10]
    runner = engine.runner
    want = runner.logits(plan.scheduled)
    host = build_host_inputs(plan.scheduled, runner.block_size, table_width=8)
    padded = pad_inputs(host, 8, 128, 40, 8 * runner.block_size, pad_seq_tokens=0)
    assert padded.cu_seqlens_q.tolist() == [0, 30, 40, 40, 40, 40, 40, 40, 40]
    assert padded.slot_mapping[40:].tolist() == [-1] * 88
    inputs = InputUploader(runner.device).upload(padded)
    hidden = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches, inputs.meta)
    got = runner.model.compute_logits(hidden[inputs.sample_idx])
    assert want.shape == (1, runner.model.config.vocab_size)  # the chunk samples nothing
    torch.testing.assert_close(got, want)


def test_prefill_token_buckets() -> None:
    assert prefill_token_buckets(100) == [100]
    assert prefill_token_buckets(512) == [128, 256, 512]
    assert prefill_token_buckets(1000) == [128, 256, 512, 768, 1000]
    assert prefill_token_buckets(2048) == [128, *range(256, 2049, 256)]
