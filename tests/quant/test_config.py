"""quantization_config parsing: the formats that run, and everything else refused at start-up
with a message that names it. compressed-tensors configs come from compressed-tensors itself."""

import pytest

from llm_worker.models.quant.checkpoint_config import (
    parse_quantization_config,
    resolve_quantization,
)
from llm_worker.models.quant.config import (
    BlockFp8Scheme,
    Fp8Scheme,
    Int4Scheme,
    QuantConfig,
    UnsupportedQuantization,
)
from tests.quant import formats

LAYER = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    ("raw", "scheme"),
    [
        (formats.awq_config(128), Int4Scheme("awq", 128)),
        ({"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "zero_point": True,
          "version": "GEMM"}, Int4Scheme("awq", 64)),
        (formats.gptq_config(128, True, True), Int4Scheme("gptq", 128, zero_offset=1)),
        (formats.gptq_config(-1, False, False), Int4Scheme("gptq", -1, zero_offset=0)),
        (formats.BLOCK_FP8_CONFIG, BlockFp8Scheme((128, 128), "weight_scale_inv")),
        ({"quant_method": "fp8", "activation_scheme": "static"}, Fp8Scheme(True, True)),
        (formats.compressed_tensors_config("FP8_DYNAMIC"), Fp8Scheme(True, False)),
        (formats.compressed_tensors_config("FP8"), Fp8Scheme(True, True)),
        (formats.compressed_tensors_config("FP8_BLOCK"),
         BlockFp8Scheme((128, 128), "weight_scale")),
    ],
)  # fmt: skip
def test_supported_formats(raw: dict, scheme: object) -> None:
    config = parse_quantization_config(raw)
    assert config is not None and config.scheme == scheme


def test_a_kv_cache_scheme_alone_leaves_the_weights_unquantized() -> None:
    kv_only = {"quant_method": "compressed-tensors", "config_groups": {},
               "kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor",
                                   "dynamic": False}}  # fmt: skip
    assert parse_quantization_config(kv_only) is None
    assert resolve_quantization({"quantization_config": kv_only}, None, False) is None
    with pytest.raises(UnsupportedQuantization, match="without config_groups"):
        parse_quantization_config({**kv_only, "kv_cache_scheme": None})


def _compressed_tensors(preset: str, **changes: object) -> dict:
    config = formats.compressed_tensors_config(preset)
    config.update(changes)
    return config


def _ct_group(preset: str, **weights: object) -> dict:
    config = formats.compressed_tensors_config(preset)
    config["config_groups"]["group_0"]["weights"].update(weights)
    return config


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({**formats.gptq_config(128, True, True), "bits": 3}, "3-bit"),
        ({**formats.gptq_config(128, True, True), "desc_act": True}, "act-order"),
        ({**formats.gptq_config(128, True, True), "checkpoint_format": "marlin"}, "marlin"),
        ({**formats.gptq_config(128, True, True), "lm_head": True}, "lm_head"),
        ({**formats.gptq_config(100, True, True)}, "group_size 100"),
        ({**formats.awq_config(128), "version": "gemv"}, "'gemv'"),
        ({**formats.awq_config(128), "zero_point": False}, "zero_point"),
        ({**formats.BLOCK_FP8_CONFIG, "fmt": "e5m2"}, "e5m2"),
        ({**formats.BLOCK_FP8_CONFIG, "weight_block_size": [64, 64]}, "[64, 64]"),
        ({**formats.BLOCK_FP8_CONFIG, "activation_scheme": "static"}, "static"),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
        (_compressed_tensors("W4A16", format="pack-quantized"), "4-bit int"),
        (_compressed_tensors("W8A8", format="int-quantized"), "8-bit int"),
        (_compressed_tensors("FP8_DYNAMIC", format="pack-quantized"), "pack-quantized"),
        (_compressed_tensors("FP8_DYNAMIC", quantization_status="frozen"), "frozen"),
        (_compressed_tensors("FP8_DYNAMIC", ignore=[]), "lm_head"),
        (_compressed_tensors("FP8_DYNAMIC", sparsity_config={"format": "sparse-24"}),
         "sparsity_config"),
        (_ct_group("FP8_DYNAMIC", strategy="group", group_size=128), "'group' strategy"),
        (_ct_group("FP8_BLOCK", block_structure=[64, 64]), "block_structure [64, 64]"),
    ],
)  # fmt: skip
def test_unsupported_formats_are_named(raw: dict, named: str) -> None:
    with pytest.raises(UnsupportedQuantization, match=named.replace("[", r"\[")):
        parse_quantization_config(raw)


def test_compressed_tensors_weight_only_fp8_is_refused() -> None:
    config = formats.compressed_tensors_config("FP8_DYNAMIC")
    config["config_groups"]["group_0"]["input_activations"] = None
    with pytest.raises(UnsupportedQuantization, match="W8A16"):
        parse_quantization_config(config)


def test_ignored_and_targeted_modules() -> None:
    config = formats.compressed_tensors_config("FP8_DYNAMIC")
    config["ignore"] = ["lm_head", "re:.*layers\\.1\\.mlp\\..*", "model.layers.0.self_attn.o_proj"]
    parsed = parse_quantization_config(config)
    assert parsed.scheme_for([LAYER]) is not None
    assert parsed.scheme_for(["model.layers.0.self_attn.o_proj"]) is None
    assert parsed.scheme_for(["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]) is None
    assert parsed.scheme_for(["model.layers.10.mlp.down_proj"]) is not None
    awq = parse_quantization_config({**formats.awq_config(128), "modules_to_not_convert": ["mlp"]})
    assert awq.scheme_for(["model.layers.3.mlp.down_proj"]) is None
    assert awq.scheme_for([LAYER]) is not None


def test_a_fused_layer_whose_shards_disagree_is_refused() -> None:
    config = QuantConfig("awq", Int4Scheme("awq", 128), ignored=(r".*\.k_proj$",))
    names = [LAYER, "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]
    with pytest.raises(UnsupportedQuantization, match="fused"):
        config.scheme_for(names)


def test_the_flag_is_checked_against_the_checkpoint() -> None:
    awq = {"quantization_config": formats.awq_config(128)}
    assert resolve_quantization(awq, "awq", dummy=False) is not None
    assert resolve_quantization(awq, None, dummy=False) is not None
    with pytest.raises(UnsupportedQuantization, match="quantized with awq"):
        resolve_quantization(awq, "gptq", dummy=False)
    ct = {"quantization_config": formats.compressed_tensors_config("FP8_DYNAMIC")}
    resolved = resolve_quantization(ct, "fp8", dummy=False)  # vLLM users' name for FP8
    assert resolved is not None and resolved.method == "compressed-tensors"
    with pytest.raises(UnsupportedQuantization, match="quantized with compressed-tensors"):
        resolve_quantization(ct, "awq", dummy=False)


def test_the_flag_on_an_unquantized_checkpoint() -> None:
    assert resolve_quantization({}, None, dummy=False) is None
    at_load = resolve_quantization({}, "fp8", dummy=False)
    assert at_load is not None and at_load.scheme == Fp8Scheme(serialized=False, static_input=False)
    with pytest.raises(UnsupportedQuantization, match="has none"):
        resolve_quantization({}, "awq", dummy=False)
    dummy = resolve_quantization({}, "gptq", dummy=True)  # random 4-bit weights, for speed runs
    assert dummy is not None and dummy.scheme == Int4Scheme("gptq", 128)
    with pytest.raises(UnsupportedQuantization, match="'int8'"):
        resolve_quantization({}, "int8", dummy=False)
