"""What a quantized checkpoint's tensors can get wrong is refused at load with a message that
names the tensor: act-order g_idx, e5m2 weights, shapes, missing and stray tensors. And what
fused layers keep per shard: per-tensor weight scales, static input scales."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_worker.models.quant.config import UnsupportedQuantization
from llm_worker.models.quant.fp8 import Fp8Linear
from llm_worker.models.quant.linear import CheckpointMismatch
from tests.oracle import make_tiny_checkpoint
from tests.quant import formats
from tests.quant.oracle import load, write_quantized

Q_PROJ = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("dense"), "llama", 4, 2, 64)


def _edit(folder: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    """Rewrite a checkpoint's tensors through `edit`, which changes the dict in place."""
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_act_order_g_idx_is_refused(dense: Path, tmp_path: Path) -> None:
    write_quantized(dense, tmp_path, formats.gptq(64, True, True),
                    formats.gptq_config(64, True, True))  # fmt: skip
    shuffled = torch.randperm(256, generator=torch.Generator().manual_seed(0)) // 64
    _edit(tmp_path, lambda t: t.update({f"{Q_PROJ}.g_idx": shuffled.to(torch.int32)}))
    with pytest.raises(UnsupportedQuantization, match=rf"{Q_PROJ}.g_idx .*act-order"):
        load(tmp_path)


def test_e5m2_weights_are_refused(dense: Path, tmp_path: Path) -> None:
    write_quantized(dense, tmp_path, formats.compressed_tensors_fp8("FP8_DYNAMIC"),
                    formats.compressed_tensors_config("FP8_DYNAMIC"))  # fmt: skip
    key = f"{Q_PROJ}.weight"
    _edit(tmp_path, lambda t: t.update({key: t[key].float().to(torch.float8_e5m2)}))
    with pytest.raises(UnsupportedQuantization, match="e5m2"):
        load(tmp_path)


def test_a_wrong_shape_names_the_tensor(dense: Path, tmp_path: Path) -> None:
    write_quantized(dense, tmp_path, formats.awq(128), formats.awq_config(128))
    key = f"{Q_PROJ}.qweight"
    _edit(tmp_path, lambda t: t.update({key: t[key][:, :-1].contiguous()}))
    with pytest.raises(CheckpointMismatch, match=rf"{key} is int32 \[256, 31\]; expected"):
        load(tmp_path)


def test_missing_and_stray_tensors(dense: Path, tmp_path: Path) -> None:
    write_quantized(dense, tmp_path / "missing", formats.awq(128), formats.awq_config(128))
    _edit(tmp_path / "missing", lambda t: t.pop(f"{Q_PROJ}.qzeros"))
    with pytest.raises(KeyError, match=rf"{Q_PROJ}.qzeros"):
        load(tmp_path / "missing")
    write_quantized(dense, tmp_path / "stray", formats.awq(128), formats.awq_config(128))
    _edit(tmp_path / "stray", lambda t: t.update({f"{Q_PROJ}.weight": torch.zeros(256, 256)}))
    with pytest.raises(KeyError, match=rf"{Q_PROJ}.weight.*int4"):
        load(tmp_path / "stray")


def test_zero_biases_of_layers_without_one_are_skipped(dense: Path, tmp_path: Path) -> None:
    """AutoGPTQ writes a bias for every layer, zeros where the model has none."""
    write_quantized(dense, tmp_path, formats.gptq(64, True, True),
                    formats.gptq_config(64, True, True))  # fmt: skip
    _edit(tmp_path, lambda t: t.update({f"{Q_PROJ}.bias": torch.zeros(256)}))
    assert load(tmp_path).model.layers[0].self_attn.qkv_proj.bias is None
    _edit(tmp_path, lambda t: t.update({f"{Q_PROJ}.bias": torch.ones(256)}))
    with pytest.raises(CheckpointMismatch, match="nonzero bias"):
        load(tmp_path)


def test_quantized_tensors_outside_the_linear_layers_are_refused(
    dense: Path, tmp_path: Path
) -> None:
    write_quantized(dense, tmp_path, formats.compressed_tensors_fp8("FP8_DYNAMIC"),
                    formats.compressed_tensors_config("FP8_DYNAMIC"))  # fmt: skip
    key = "model.embed_tokens.weight"
    _edit(tmp_path, lambda t: t.update({key: t[key].to(torch.float8_e4m3fn)}))
    with pytest.raises(CheckpointMismatch, match=key):
        load(tmp_path)


def test_fused_shards_keep_their_per_tensor_scales(dense: Path, tmp_path: Path) -> None:
    layers = write_quantized(dense, tmp_path, formats.compressed_tensors_fp8("FP8"),
                             formats.compressed_tensors_config("FP8"))  # fmt: skip
    qkv = load(tmp_path).model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, Fp8Linear)
    shard_scales = [layers[f"model.layers.0.self_attn.{p}"].tensors["weight_scale"]
                    for p in ("q_proj", "k_proj", "v_proj")]  # fmt: skip
    assert len({s.item() for s in shard_scales}) == 3  # each shard its own
    for shard, scale in enumerate(shard_scales):
        rows = qkv.spec.shard_rows(shard)
        assert torch.equal(qkv.weight_scale[rows], scale.expand(rows.stop - rows.start))


def test_static_input_scales_of_fused_shards_take_the_largest(dense: Path, tmp_path: Path) -> None:
    write_quantized(dense, tmp_path, formats.compressed_tensors_fp8("FP8"),
                    formats.compressed_tensors_config("FP8"))  # fmt: skip
    scales = {"q_proj": 0.01, "k_proj": 0.03, "v_proj": 0.02}
    _edit(tmp_path, lambda t: t.update({f"model.layers.0.self_attn.{p}.input_scale":
                                        torch.tensor([s]) for p, s in scales.items()}))  # fmt: skip
    qkv = load(tmp_path).model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, Fp8Linear) and qkv.input_scale is not None
    assert qkv.input_scale.item() == pytest.approx(0.03)


def test_the_flag_must_match_the_checkpoint(dense: Path, tmp_path: Path) -> None:
    write_quantized(dense, tmp_path, formats.awq(128), formats.awq_config(128))
    with pytest.raises(UnsupportedQuantization, match="--quantization gptq does not match"):
        load(tmp_path, quantization="gptq")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "awq"
