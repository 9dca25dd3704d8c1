"""--kv-cache-dtype fp8 through the builder: twice the blocks for the same memory, per-layer
scales read from a checkpoint (and formats refused by name), the draft's cache in the same
dtype, and engines that run end to end on the CPU."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from llm_worker.config import EngineSettings
from llm_worker.engine.builder import EngineConfigError
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.kernels.reference import dequantize_kv, quantize_kv
from llm_worker.models.attention import KVScale
from llm_worker.models.kv_cache_format import apply_kv_scales
from llm_worker.schemas import SamplingParams
from tests.oracle import engine_for, make_tiny_checkpoint


def tiny(**overrides: object) -> LLMEngine:
    settings = EngineSettings(model="tiny-llama", load_format="dummy", device="cpu",
                              **overrides)  # type: ignore[arg-type]  # fmt: skip
    return LLMEngine.from_settings(settings)


@pytest.mark.parametrize(("dtype", "ratio"), [("bfloat16", 2), ("float32", 4)])
def test_fp8_holds_more_blocks_in_the_same_memory(dtype: str, ratio: int) -> None:
    """A block of e4m3 K/V is half a bf16 block (a quarter of fp32): the same bytes hold
    twice (four times) the tokens, and the cache really is e4m3."""
    auto = tiny(dtype=dtype, kv_cache_memory_gb=0.01)
    fp8 = tiny(dtype=dtype, kv_cache_memory_gb=0.01, kv_cache_dtype="fp8")
    num_blocks = auto.runner.num_blocks
    assert ratio * num_blocks <= fp8.runner.num_blocks < ratio * (num_blocks + 1)
    assert fp8.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn
    assert auto.runner.kv_caches[0][0].dtype == getattr(torch, dtype)


def test_fp8_alias_and_e5m2_refusal() -> None:
    assert tiny(kv_cache_memory_gb=0.01, kv_cache_dtype="fp8_e4m3").runner.kv_cache_dtype == (
        torch.float8_e4m3fn
    )
    with pytest.raises(EngineConfigError, match="fp8_e5m2 is not supported: use fp8"):
        tiny(kv_cache_memory_gb=0.01, kv_cache_dtype="fp8_e5m2")


def _with_kv_scales(folder: Path, scales: list[tuple[float, float]], **scheme: object) -> None:
    """Add compressed-tensors KV-cache scales to a checkpoint, as llm-compressor writes them."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    for i, (k, v) in enumerate(scales):
        tensors[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor([k], dtype=torch.bfloat16)
        tensors[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor([v], dtype=torch.bfloat16)
    save_file(tensors, path, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    kv_scheme = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
                 "symmetric": True, **scheme}  # fmt: skip
    config["quantization_config"] = {"quant_method": "compressed-tensors", "config_groups": {},
                                     "kv_cache_scheme": kv_scheme}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))


def _hf_logprobs_over_fp8_kv(
    folder: Path, scales: list[tuple[float, float]], prompts: list[list[int]],
    outputs: list[list[int]],
) -> list[list[float]]:  # fmt: skip
    """HF's log-probabilities of each output token, its attention fed each layer's K/V as an
    e4m3 cache holds them under these scales (quantized, then dequantized: after rotary, as the
    engine stores them). Where transformers applies the checkpoint's kv_cache_scheme itself,
    quantizing again with the same scales changes nothing."""

    def attention(module: torch.nn.Module, query, key, value, *args, **kwargs):  # type: ignore[no-untyped-def]
        k_scale, v_scale = scales[module.layer_idx]
        key = dequantize_kv(quantize_kv(key, torch.float8_e4m3fn, k_scale), key.dtype, k_scale)
        value = dequantize_kv(quantize_kv(value, torch.float8_e4m3fn, v_scale), value.dtype,
                              v_scale)  # fmt: skip
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)

    AttentionInterface.register("fp8_kv_oracle", attention)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="fp8_kv_oracle")  # fmt: skip
    logprobs = []
    with torch.no_grad():
        for prompt, output in zip(prompts, outputs, strict=True):
            rows = model(torch.tensor([prompt + output])).logits[0].log_softmax(-1)
            positions = range(len(prompt) - 1, len(prompt) - 1 + len(output))
            logprobs.append([float(rows[i, t]) for i, t in zip(positions, output, strict=True)])
    return logprobs


def _bf16(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.bfloat16))


def _largest_gap(a: list[list[float]], b: list[list[float]]) -> float:
    pairs = [pair for rows in zip(a, b, strict=True) for pair in zip(*rows, strict=True)]
    return max(abs(x - y) for x, y in pairs)


def test_checkpoint_scales_reach_every_layer_and_match_hf_over_an_fp8_cache(
    tmp_path: Path,
) -> None:
    """Each emitted token's log-probability (prefill, then decode steps over the cache) is
    HF's with its attention fed the K/V an e4m3 cache holds under the checkpoint's scales; with
    the scales taken off the layers, it is not."""
    folder = make_tiny_checkpoint(tmp_path / "ckpt", "llama", 4, 2, 64)
    scales = [(0.0625, 0.015625), (0.05, 0.02)]
    _with_kv_scales(folder, scales)
    stored = [(_bf16(k), _bf16(v)) for k, v in scales]  # the checkpoint holds them in bf16
    prompts = [[5, 9, 17, 33, 2, 61, 7], [3, 4, 5, 6], list(range(40, 90))]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=0)

    def run(engine: LLMEngine) -> tuple[list[list[int]], list[list[float]]]:
        outs = engine.generate(prompts, params)
        return [o.output_token_ids for o in outs], [
            [t.logprob or 0.0 for t in o.logprobs or []] for o in outs
        ]

    engine = engine_for(folder, kv_cache_dtype="fp8")
    layers = engine.runner.model.model.layers
    assert [layer.self_attn.kv_scale for layer in layers] == [KVScale(*kv) for kv in stored]
    tokens, logprobs = run(engine)
    oracle = _hf_logprobs_over_fp8_kv(folder, stored, prompts, tokens)
    assert _largest_gap(logprobs, oracle) < 1e-4
    apply_kv_scales(engine.runner.model, (KVScale(),) * len(layers))
    tokens, unscaled = run(engine)
    assert _largest_gap(unscaled, _hf_logprobs_over_fp8_kv(folder, stored, prompts, tokens)) > 1e-2
    # The checkpoint's scales with a 16-bit cache: not used.
    assert engine_for(folder).runner.model.model.layers[0].self_attn.kv_scale == KVScale()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "channel"}, "strategy='channel'"),
        ({"num_bits": 4}, "num_bits=4"),
        ({"dynamic": True}, "dynamic=True"),
    ],
)
def test_kv_cache_schemes_other_than_static_per_tensor_fp8_are_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    folder = make_tiny_checkpoint(tmp_path / "ckpt", "llama", 4, 2, 64)
    _with_kv_scales(folder, [(0.1, 0.1), (0.1, 0.1)], **change)
    with pytest.raises(EngineConfigError, match=message):
        engine_for(folder, kv_cache_dtype="fp8")


def test_per_head_and_missing_scales_are_refused(tmp_path: Path) -> None:
    folder = make_tiny_checkpoint(tmp_path / "ckpt", "llama", 4, 2, 64)
    _with_kv_scales(folder, [(0.1, 0.1)])  # layer 1 has none
    with pytest.raises(EngineConfigError, match=r"not .*layer 1"):
        engine_for(folder, kv_cache_dtype="fp8")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.self_attn.k_scale"] = torch.tensor([0.1, 0.2])
    tensors["model.layers.1.self_attn.v_scale"] = torch.tensor([0.1])
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EngineConfigError, match="per-tensor"):
        engine_for(folder, kv_cache_dtype="fp8")


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculation_over_fp8_caches_gives_the_plain_fp8_tokens(method: str) -> None:
    """The draft model's cache takes the target's dtype; verification keeps greedy exact."""
    common = {"dtype": "float32", "kv_cache_dtype": "fp8", "kv_cache_memory_gb": 0.01}
    prompt = [[7, 8, 9, 7, 8, 9, 7, 8], [30, 31, 32, 30, 31]]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    want = [o.output_token_ids for o in tiny(**common).generate(prompt, params)]
    extra: dict[str, object] = {"speculative_method": method, "speculative_adaptive": False}
    if method == "draft":
        extra["speculative_draft_layers"] = 1
    engine = tiny(**common, **extra)
    if method == "draft":
        assert engine.speculator is not None and engine.speculator.draft is not None
        assert engine.speculator.draft.kv_caches[0][0].dtype == torch.float8_e4m3fn
    assert [o.output_token_ids for o in engine.generate(prompt, params)] == want


def test_fp8_kv_on_the_bundled_model_stays_close_to_the_full_precision_cache(
    smollm2_dir: Path, real_prompts: list[list[int]]
) -> None:
    """The example prompts through the engine, fp32 weights, an e4m3 cache (scales 1.0) against
    an fp32 one: the first token and its log-probability. Measured: 34 of 36 first tokens
    agree, the fp32 choice's log-probability moves by 0.06 on average, 0.20 at most."""
    common = {"max_num_seqs": 64, "kv_cache_memory_gb": 0.5}
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=5)
    fp32 = engine_for(smollm2_dir, **common).generate(real_prompts, params)
    fp8 = engine_for(smollm2_dir, kv_cache_dtype="fp8", **common).generate(real_prompts, params)
    agree, shifts = 0, []
    for a, b in zip(fp32, fp8, strict=True):
        assert a.logprobs is not None and b.logprobs is not None
        token = a.output_token_ids[0]
        agree += b.output_token_ids[0] == token
        fp8_top = b.logprobs[0].top_logprobs or {}
        shifts.append(abs((a.logprobs[0].logprob or 0.0) - fp8_top.get(token, float("-inf"))))
    assert agree >= len(real_prompts) * 8 // 9, agree
    assert sum(shifts) / len(shifts) < 0.12 and max(shifts) < 0.4, shifts
