"""Speculative decoding: proposers, exactness of verification, the engine's bookkeeping.

Oracles: a brute-force search for the n-gram proposer, HF generate() for greedy tokens, and the
target's exact distribution (computed with HF, filters applied independently here) for sampling.
"""

import math
import random
from pathlib import Path

import pytest
import torch

from llm_worker.engine.ngram import NgramProposer
from llm_worker.engine.rejection import VerifyItem, verify
from llm_worker.engine.sampler import SamplingRow
from llm_worker.engine.speculative import SpecController
from llm_worker.schemas import SamplingParams
from tests import oracle
from tests.oracle import TINY_CONFIGS, engine_for, hf_greedy


def _brute_force_lookup(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    for n in range(max_n, min_n - 1, -1):
        if n > len(tokens):
            continue
        suffix = tokens[len(tokens) - n :]
        for end in range(n - 1, len(tokens) - 1):  # an occurrence ending before the last token
            if tokens[end - n + 1 : end + 1] == suffix:
                return tokens[end + 1 : end + 1 + k]
    return []


def test_ngram_proposer_matches_brute_force_as_sequences_grow() -> None:
    rng = random.Random(0)
    for _ in range(200):
        proposer = NgramProposer(rng.randint(1, 3), rng.randint(3, 5))
        # Short starts are indexed token by token, long ones (a prompt) in one numpy pass.
        length = rng.choice([rng.randint(1, 10), rng.randint(64, 300)])
        tokens = [rng.randint(0, rng.choice([4, 60])) for _ in range(length)]
        for _ in range(25):
            k = rng.randint(1, 6)
            expected = _brute_force_lookup(tokens, k, proposer.min_n, proposer.max_n)
            assert proposer.propose("s", tokens, k) == expected, (tokens, k)
            tokens = tokens + [rng.randint(0, 4) for _ in range(rng.randint(1, 3))]


def test_ngram_proposer_indexes_each_token_once() -> None:
    proposer = NgramProposer(2, 4)
    tokens = [*range(5000), 10, 11, 12]
    assert proposer.propose("s", tokens, 3) == [13, 14, 15]
    index = proposer._indexes["s"]
    tokens.append(13)
    assert proposer.propose("s", tokens, 3) == [14, 15, 16]
    # One entry per position, whatever the spread of n: memory grows with the sequence only.
    assert index.num_indexed == len(tokens)
    assert index.size == len(tokens) - 1
    proposer.forget("s")
    assert "s" not in proposer._indexes


# ---- verification keeps the target distribution ----


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit of `counts` to `probs` (cells with expected < 5 merged into one)."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), stat / 2.0))


def _filtered(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """The oracle's own temperature + top-k, independent of the sampler's code."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if 0 < top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


@pytest.mark.parametrize("proposer", ["point_mass", "draft_model"])
def test_rejection_sampling_emits_the_target_distribution(proposer: str) -> None:
    """60,000 verifications of k=3 drafts over a 12-token vocabulary. The first emitted token
    must follow p0, and the j-th (when one is emitted) p_j. A 2% shift in total variation would
    give these tests a chi-square noncentrality of at least 96, far past the 1e-3 threshold;
    the drafts themselves, distributed as q, are shown to fail the same test."""
    gen = torch.Generator().manual_seed(0)
    vocab, k, n = 12, 3, 60_000
    params = SamplingParams(temperature=0.8, top_k=8, max_tokens=16)
    target_logits = torch.randn(k + 1, vocab, generator=gen) * 2
    p = _filtered(target_logits, params.temperature, params.top_k).float()
    row = SamplingRow(params=params, token_ids=[1], num_prompt_tokens=1, generator=None)
    if proposer == "draft_model":
        q = _filtered(torch.randn(k, vocab, generator=gen) * 2, 1.0, 10).float()
    else:  # n-gram: a fixed guess, a point mass for the verifier
        q = torch.zeros(k, vocab)
        q[torch.arange(k), p[:k].argmax(dim=-1).roll(1)] = 1.0
    drafts = torch.multinomial(q.repeat(n, 1), 1, generator=gen).view(n, k)
    items = [
        VerifyItem([row] * (k + 1), d.tolist(), q if proposer == "draft_model" else None)
        for d in drafts
    ]
    out = verify(target_logits.repeat(n, 1), items, torch.Generator().manual_seed(1))
    tokens_per_item = [len(o) for o in out]
    assert min(tokens_per_item) >= 1 and max(tokens_per_item) <= k + 1
    for j in range(k + 1):
        emitted = torch.tensor([o[j].token_id for o in out if len(o) > j])
        if emitted.numel() < 2000:
            continue
        counts = torch.bincount(emitted, minlength=vocab).double()
        assert _chi_square_p(counts, p[j].double()) > 1e-3, (j, counts, p[j])
    if proposer == "draft_model":
        raw = torch.bincount(drafts[:, 0], minlength=vocab).double()
        assert _chi_square_p(raw, p[0].double()) < 1e-6  # the test has the power to notice


def test_greedy_verification_is_prefix_matching() -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8)
    row = SamplingRow(params=params, token_ids=[1], num_prompt_tokens=1, generator=None)
    logits = torch.full((8, 10), -5.0)
    best = [3, 4, 5, 6, 7, 8, 9, 2]
    logits[torch.arange(8), best] = 5.0
    items = [VerifyItem([row] * 4, [3, 4, 0]), VerifyItem([row] * 4, [9, 9, 9])]
    out = verify(logits, items, None)
    assert [[t.token_id for t in o] for o in out] == [[3, 4, 5], [7]]
    full = verify(logits[:4], [VerifyItem([row] * 4, [3, 4, 5])], None)
    assert [t.token_id for t in full[0]] == [3, 4, 5, 6]  # all kept: a bonus token


# ---- the adaptive controller ----


def test_controller_keeps_the_faster_mode_per_batch_bucket_and_reprobes() -> None:
    ctl = SpecController(adaptive=True, disable_by_batch_size=None, warmup_steps=2,
                         window_steps=4, reprobe_every=12)  # fmt: skip
    rates = {(1, True): 300.0, (1, False): 100.0, (128, True): 4000.0, (128, False): 9000.0}
    picks: dict[int, list[bool]] = {1: [], 128: []}
    for _ in range(60):
        for batch in (1, 128):
            mode = ctl.decide(batch)
            picks[batch].append(mode)
            ctl.observe(batch, mode, int(rates[batch, mode]), 1.0)
    assert picks[1][:4] == [True, True, False, False]  # warm-up measures both
    assert picks[1][4:].count(True) >= 48 and picks[128][4:].count(False) >= 48
    # A probe runs the slower mode for a whole window; probes that confirm the choice come
    # further apart: the first 12 steps after warm-up began, the next 24 steps after that.
    probes = [i for i, mode in enumerate(picks[1][4:]) if not mode]
    assert probes == [8, 9, 10, 11, 32, 33, 34, 35]
    assert [i for i, mode in enumerate(picks[128][4:]) if mode] == probes
    # A bucket whose workload changes switches mode, and probes often again.
    for _ in range(60):
        mode = ctl.decide(1)
        ctl.observe(1, mode, 50 if mode else 100, 1.0)  # speculation stopped paying
    assert not ctl.decide(1)
    assert ctl.bucket(100) == ctl.bucket(128) == 128 and ctl.bucket(1) == 1
    # Steps that also prefill cannot be measured: they follow what was learned, and a bucket
    # that has learned nothing does not speculate.
    assert ctl.decide(1, measurable=False) is False  # bucket 1 now prefers no speculation
    fresh = SpecController(adaptive=True, disable_by_batch_size=None, warmup_steps=2)
    assert fresh.decide(4, measurable=False) is False
    for mode in (True, True, False, False):
        fresh.observe(4, mode, 400 if mode else 100, 1.0)
    assert fresh.decide(4, measurable=True) is True  # closes the warm-up window
    assert fresh.decide(4, measurable=False) is True
    capped = SpecController(adaptive=False, disable_by_batch_size=8)
    assert capped.decide(7) and not capped.decide(8)


def test_controller_weighs_every_second_alike() -> None:
    """Throughput is tokens over seconds, not a mean of per-step rates: a plain step cut short
    (one a speculating step drained, timed in a fraction of a millisecond) must not make the
    plain mode look faster than it is. Here speculation emits 420 tokens per 16 ms, plain 128
    per 8 ms with one step in four timed at 0.2 ms: a mean of per-step rates puts plain six
    times ahead, tokens over seconds put speculation 1.24x ahead."""
    ctl = SpecController(adaptive=True, disable_by_batch_size=None, warmup_steps=3,
                         window_steps=4, reprobe_every=8)  # fmt: skip
    picks = []
    for _ in range(80):
        mode = ctl.decide(128)
        picks.append(mode)
        if mode:
            ctl.observe(128, True, 420, 0.016)
        else:
            seconds = 0.0002 if len(picks) % 4 == 0 else 0.008
            ctl.observe(128, False, 128, seconds)
    assert picks[40:].count(True) >= 30
    (spec_rate, _), (plain_rate, _) = ctl.learned()[128][True], ctl.learned()[128][False]
    assert spec_rate == pytest.approx(420 / 0.016)
    assert plain_rate < spec_rate


# ---- the engine: greedy tokens identical to HF with speculation on ----

SPEC_SETTINGS = {
    # chunked prefill, preemption and prefix caching together, speculation always on
    "ngram": {"speculative_method": "ngram", "prompt_lookup_min": 1},
    "draft-truncated": {"speculative_method": "draft", "speculative_draft_layers": 1},
    # a separately loaded draft: the target's own weights (every draft kept, bonus tokens) and an
    # unrelated model (nearly every draft rejected)
    "draft-same": {"speculative_method": "draft"},
    "draft-unrelated": {"speculative_method": "draft"},
}
ENGINE_PRESSURE = {
    "max_num_batched_tokens": 24,
    "num_gpu_blocks_override": 14,
    "max_model_len": 112,  # what 14 blocks of 8 hold
    "block_size": 8,
    "enable_prefix_caching": True,
    "speculative_adaptive": False,
    "num_speculative_tokens": 3,
}


def _repetitive_prompts() -> list[list[int]]:
    rng = random.Random(3)
    shared = [rng.randrange(3, oracle.TINY_VOCAB) for _ in range(17)]
    prompts = []
    for _ in range(8):
        phrase = [rng.randrange(3, oracle.TINY_VOCAB) for _ in range(rng.randint(2, 5))]
        prompts.append(shared + phrase * rng.randint(2, 6))
    return prompts


@pytest.fixture(scope="module")
def draft_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return oracle.make_tiny_checkpoint(tmp_path_factory.mktemp("draft"), "llama", 2, 2, 64, seed=5)


@pytest.mark.parametrize(
    ("method", "config"),
    [(m, c) for m in ("ngram", "draft-truncated") for c in TINY_CONFIGS[:2]]
    + [(m, TINY_CONFIGS[2]) for m in ("draft-same", "draft-unrelated")],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_greedy_with_speculation_matches_hf(
    tmp_path: Path, draft_checkpoint: Path, method: str, config: tuple
) -> None:
    name, model_type, heads, kv_heads, head_dim = config
    folder = oracle.make_tiny_checkpoint(tmp_path / name, model_type, heads, kv_heads, head_dim)
    prompts = _repetitive_prompts()
    expected = hf_greedy(folder, prompts, 20, ignore_eos=True)
    overrides: dict[str, object] = {**ENGINE_PRESSURE, **SPEC_SETTINGS[method]}
    if method == "draft-same":
        overrides["speculative_model"] = str(folder)
    if method == "draft-unrelated":
        overrides["speculative_model"] = str(draft_checkpoint)
    engine = engine_for(folder, **overrides)
    outputs = engine.generate(prompts, oracle.greedy(20, ignore_eos=True))
    assert [o.output_token_ids for o in outputs] == expected
    stats = engine.stats()
    spec = stats.spec
    assert spec is not None and spec.num_drafts > 20
    if method == "draft-same":
        assert spec.num_accepted_tokens >= 0.9 * spec.num_draft_tokens
    elif method == "draft-unrelated":
        assert spec.num_accepted_tokens < 0.2 * spec.num_draft_tokens
    else:
        assert 0 < spec.num_accepted_tokens < spec.num_draft_tokens
    assert stats.num_preemptions > 0 and stats.prefix_cache.hits > 0
    engine.block_manager.check_invariants([])
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


# ---- the engine: sampled tokens follow the target's distribution ----

SMALL_VOCAB = 20


@pytest.fixture(scope="module")
def small_vocab_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from transformers import AutoConfig, AutoModelForCausalLM

    folders = []
    for name, layers, seed in (("target", 2, 0), ("draft", 1, 1)):
        cfg = AutoConfig.for_model(
            "llama", vocab_size=SMALL_VOCAB, hidden_size=64, intermediate_size=128,
            num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=64, initializer_range=0.4, bos_token_id=1,
            eos_token_id=2, pad_token_id=0,
        )  # fmt: skip
        torch.manual_seed(seed)
        folder = tmp_path_factory.mktemp(name)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1]


def _exact_marginals(folder: Path, prompt: list[int], temperature: float, top_k: int) -> list:
    """p(x1) and p(x2) of the 2nd and 3rd output tokens, summing over the earlier ones."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    v = SMALL_VOCAB
    with torch.no_grad():
        p0 = _filtered(model(torch.tensor([prompt])).logits[0, -1], temperature, top_k)
        one = torch.tensor([[*prompt, a] for a in range(v)])
        p1_given = _filtered(model(one).logits[:, -1], temperature, top_k)  # [x0, x1]
        two = torch.tensor([[*prompt, a, b] for a in range(v) for b in range(v)])
        p2_given = _filtered(model(two).logits[:, -1], temperature, top_k).view(v, v, v)
    joint01 = p0[:, None] * p1_given
    return [p0, joint01.sum(0), (joint01[:, :, None] * p2_given).sum((0, 1))]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["draft", "ngram"])
def test_sampled_tokens_follow_the_target_distribution(
    small_vocab_pair: tuple[Path, Path], method: str
) -> None:
    """40,000 samples from a 20-token-vocabulary model, temperature 0.8 and top-k 12 on both
    sides. The first token comes from the prefill; the next two from one verification of two
    drafts. Each position's frequencies must fit the exact marginal; a 2% total variation bias
    would add a noncentrality of at least 64 to a statistic whose 1e-3 threshold is about 43,
    so it would be caught."""
    target, draft = small_vocab_pair
    # The model's own greedy continuation: prompt lookup then proposes what the model tends to
    # say next, so drafts are kept often enough to exercise every path.
    prompt = [5, 7, *hf_greedy(target, [[5, 7]], 24, ignore_eos=True)[0]]
    params = SamplingParams(temperature=0.8, top_k=12, max_tokens=4, ignore_eos=True)
    extra: dict[str, object] = {"speculative_method": method, "num_speculative_tokens": 2}
    if method == "draft":
        extra["speculative_model"] = str(draft)
    else:
        extra["prompt_lookup_min"] = 1
    engine = engine_for(
        target, max_num_seqs=2000, max_num_batched_tokens=16384, num_gpu_blocks_override=4096,
        speculative_adaptive=False, seed=11, **extra,
    )  # fmt: skip
    n = 40_000
    outputs = engine.generate([prompt] * n, params)
    stats = engine.stats().spec
    assert stats is not None and stats.num_drafts >= n // 2
    # First drafts kept often enough that many third tokens came from a second verified row.
    assert stats.accepted_by_position[0] > n // 40, stats
    exact = _exact_marginals(target, prompt, params.temperature, params.top_k)
    for position in range(3):
        tokens = torch.tensor([o.output_token_ids[position] for o in outputs])
        counts = torch.bincount(tokens, minlength=SMALL_VOCAB).double()
        p_value = _chi_square_p(counts, exact[position])
        assert p_value > 1e-3, (position, p_value, counts, exact[position] * n)
    assert math.isclose(float(exact[1].sum()), 1.0, rel_tol=1e-9)


# ---- the engine: per-request behaviour under speculation ----


def _loop_prompt() -> list[int]:
    return [11, 12, 13, 14] * 6  # prompt lookup proposes the loop at once


def _spec_tiny(**overrides: object):
    from tests.engine.test_engine_behaviour import tiny_engine

    settings: dict[str, object] = {
        "speculative_method": "ngram", "prompt_lookup_min": 1, "speculative_adaptive": False,
    }  # fmt: skip
    return tiny_engine(**{**settings, **overrides})


def test_opted_out_requests_never_speculate_and_others_do() -> None:
    engine = _spec_tiny()
    out_off = engine.generate([_loop_prompt()], SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True, speculative=False))  # fmt: skip
    assert engine.stats().spec.num_drafts == 0  # type: ignore[union-attr]
    out_on = engine.generate([_loop_prompt()], SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True))  # fmt: skip
    assert engine.stats().spec.num_drafts > 0  # type: ignore[union-attr]
    assert out_on[0].output_token_ids == out_off[0].output_token_ids


def test_max_tokens_stop_ids_and_logprobs_hold_under_speculation() -> None:
    plain = _spec_tiny(speculative_disable_by_batch_size=1)  # never speculates
    spec = _spec_tiny()
    base = SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True, logprobs=2)
    [ref] = plain.generate([_loop_prompt()], base)
    [got] = spec.generate([_loop_prompt()], base)
    assert spec.stats().spec.num_accepted_tokens > 0  # type: ignore[union-attr]
    assert got.output_token_ids == ref.output_token_ids and len(got.output_token_ids) == 9
    assert got.logprobs is not None and ref.logprobs is not None
    for a, b in zip(got.logprobs, ref.logprobs, strict=True):
        assert a.token_id == b.token_id and a.top_logprobs is not None
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    # A stop token that a kept draft produces ends the output there, drafts after it dropped.
    stop_at = ref.output_token_ids[4]
    first = ref.output_token_ids.index(stop_at)
    params = SamplingParams(temperature=0.0, max_tokens=9, stop_token_ids=[stop_at])
    [stopped] = spec.generate([_loop_prompt()], params)
    assert stopped.output_token_ids == ref.output_token_ids[: first + 1]
    assert stopped.finish_reason == "stop"
    spec.block_manager.check_invariants([])
    assert spec.block_manager.num_free_blocks == spec.block_manager.num_blocks


def test_bad_speculative_settings_fail_start_up_clearly(
    small_vocab_pair: tuple[Path, Path], draft_checkpoint: Path
) -> None:
    from llm_worker.engine.builder import EngineConfigError

    with pytest.raises(EngineConfigError, match="exactly one of --speculative-model"):
        _spec_tiny(speculative_method="draft")
    with pytest.raises(EngineConfigError, match=r"1\.\.1 layers"):
        _spec_tiny(speculative_method="draft", speculative_draft_layers=2)
    with pytest.raises(EngineConfigError, match="without --speculative-method draft"):
        _spec_tiny(speculative_method=None, speculative_draft_layers=1)
    with pytest.raises(EngineConfigError, match="vocabulary"):
        engine_for(draft_checkpoint, speculative_method="draft",
                   speculative_model=str(small_vocab_pair[1]))  # fmt: skip


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_penalties_and_min_tokens_hold_under_speculation(method: str) -> None:
    """Each verified position applies penalties with the drafts before it as history, and
    min_tokens' blocks while under it: the same greedy tokens as one at a time."""
    extra: dict[str, object] = {"speculative_draft_layers": 1} if method == "draft" else {}
    plain = _spec_tiny(speculative_disable_by_batch_size=1)
    spec = _spec_tiny(speculative_method=method, num_speculative_tokens=3, **extra)
    prompts = [_loop_prompt(), [7, 8, 9] * 5, [30, 31] * 9]
    params = [
        SamplingParams(temperature=0.0, max_tokens=16, repetition_penalty=1.15,
                       frequency_penalty=0.1, presence_penalty=0.1, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=16, min_tokens=12, stop_token_ids=[7, 8]),
        SamplingParams(temperature=0.0, max_tokens=16, repetition_penalty=1.05, min_tokens=5,
                       logprobs=1),
    ]  # fmt: skip
    expected = plain.generate(prompts, params)
    got = spec.generate(prompts, params)
    assert [o.output_token_ids for o in got] == [o.output_token_ids for o in expected]
    assert [o.finish_reason for o in got] == [o.finish_reason for o in expected]
    stats = spec.stats().spec
    assert stats is not None and stats.num_drafts > 5 and stats.num_accepted_tokens > 0


def test_each_verified_position_sees_the_drafts_before_it() -> None:
    """Row j's history ends with drafts[:j] (penalties) and min_tokens blocks only the
    positions still under it; with a frequency penalty, a draft repeated at the next position
    loses there exactly as it would one token at a time."""
    engine = _spec_tiny()
    params = SamplingParams(temperature=0.0, max_tokens=20, min_tokens=3, frequency_penalty=1.0,
                            stop_token_ids=[99])  # fmt: skip
    engine.add_request("r", [5, 6, 7], params)
    engine.step()  # prefill: one output token
    seq = engine.requests["r"].seq
    rows = engine.rows.verifying(seq, [40, 41, 42])
    assert [r.token_ids[len(seq.token_ids) :] for r in rows] == [[], [40], [40, 41], [40, 41, 42]]
    # one output so far, min_tokens 3: positions 0 and 1 are still under it
    assert [99 in r.blocked_token_ids for r in rows] == [True, True, False, False]
    # Target logits that prefer 40 at both positions, by less than the penalty at the second.
    logits = torch.zeros(3, 100)
    logits[0, 40], logits[1, 40], logits[1, 50] = 5.0, 3.0, 2.5
    out = verify(logits, [VerifyItem(engine.rows.verifying(seq, [40, 40]), [40, 40])], None)
    assert [t.token_id for t in out[0]] == [40, 50]


def _two_decoding(num_blocks: int):
    from llm_worker.engine.block_manager import BlockManager
    from llm_worker.engine.config import SchedulerConfig
    from llm_worker.engine.scheduler import Scheduler
    from llm_worker.engine.sequence import Sequence, SequenceMetrics, SequenceStatus

    bm = BlockManager(num_blocks=num_blocks, block_size=4, enable_prefix_caching=False)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64,
                                          max_model_len=64, enable_chunked_prefill=True), bm)
    for name, length in (("older", 4), ("newer", 5)):  # pending token at positions 3 and 4
        seq = Sequence(name, list(range(10, 10 + length)), 2, SamplingParams(max_tokens=20),
                       SequenceMetrics(arrival_time=0.0))  # fmt: skip
        assert bm.allocate(seq, length - 1)
        seq.num_computed_tokens, seq.status = length - 1, SequenceStatus.RUNNING
        scheduler.running.append(seq)
    return scheduler


def _older_drafts(scheduler) -> dict:
    return {scheduler.running[0]: [1, 2, 3]}  # positions 4-6: a second block


def test_drafts_never_cost_a_later_sequence_its_step() -> None:
    """One free block left: the older sequence's drafts would need it, the newer sequence's
    next token needs it. The drafts are dropped and nobody is preempted; with a block to
    spare, they ride along."""
    tight = _two_decoding(num_blocks=3)
    assert tight.block_manager.num_free_blocks == 1
    out = tight.schedule(_older_drafts(tight))
    assert not out.preempted
    assert [(s.seq.request_id, s.num_spec) for s in out.scheduled] == [("older", 0), ("newer", 0)]
    roomy = _two_decoding(num_blocks=4)
    out = roomy.schedule(_older_drafts(roomy))
    assert not out.preempted
    assert [(s.seq.request_id, s.num_spec) for s in out.scheduled] == [("older", 3), ("newer", 0)]


def test_plan_explores_on_pure_decode_steps_even_with_a_backlog() -> None:
    """A step is measurable (may explore) when every running sequence decodes and nothing can
    be admitted: a backlog behind a full batch still gives pure decode steps."""
    from llm_worker.engine.sequence import Sequence, SequenceMetrics
    from llm_worker.engine.speculative import SpecConfig, Speculator

    def decoding(name: str) -> Sequence:
        seq = Sequence(name, [11, 12, 13, 11, 12], 4, SamplingParams(max_tokens=20),
                       SequenceMetrics(arrival_time=0.0))  # fmt: skip
        seq.num_computed_tokens = 4
        return seq

    spec = Speculator(SpecConfig("ngram", 3), ngram=NgramProposer(1, 3))
    running = [decoding("a"), decoding("b")]
    assert not spec.decide(running, num_waiting=5, max_num_seqs=4)  # room to admit: prefill
    assert not spec.speculating  # nothing learned yet, and this step cannot teach
    assert spec.decide(running, num_waiting=5, max_num_seqs=2)  # full batch: pure decode
    drafts, faults = spec.propose(running, 64)
    assert spec.speculating and drafts[running[0]] == [13, 11, 12] and not faults
