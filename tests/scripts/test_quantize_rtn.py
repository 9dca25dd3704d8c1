"""scripts/quantize_rtn.py writes folders the worker loads as AWQ and compressed-tensors FP8:
int4 weights within a step of the dense ones, FP8 the same layers --quantization fp8 makes,
and a quantization_config compressed-tensors itself reads as FP8_DYNAMIC."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
from safetensors.torch import load_file

from llm_worker.models.quant.fp8 import Fp8Linear
from llm_worker.models.quant.int4 import Int4Linear
from tests.oracle import make_tiny_checkpoint
from tests.quant.oracle import load

REPO_ROOT = Path(__file__).resolve().parents[2]


def _quantize(dense: Path, out: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "quantize_rtn.py"), "--model", str(dense),
         "--out", str(out), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("dense"), "llama", 4, 2, 64)


def test_awq_round_to_nearest(dense: Path, tmp_path: Path) -> None:
    _quantize(dense, tmp_path, "--format", "awq", "--group-size", "64")
    model = load(tmp_path)
    dense_weights = load_file(dense / "model.safetensors")
    for linear in model.linear_layers():
        assert isinstance(linear, Int4Linear)
        eye = torch.eye(linear.spec.in_features)
        dequantized = linear(eye).T  # [out, in]: the layer applied to each basis vector
        original = torch.cat([dense_weights[f"{name}.weight"] for name in linear.spec.names])
        step = linear.scales.float().repeat_interleave(64, 0).T  # [out, in]
        assert ((dequantized - original).abs() <= step + 1e-6).all()
        assert ((dequantized - original).abs() <= step / 2 + 1e-6).float().mean() > 0.99


def test_fp8_is_what_quantizing_at_load_gives(dense: Path, tmp_path: Path) -> None:
    _quantize(dense, tmp_path, "--format", "fp8")
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(config)
    assert parsed.config_groups["group_0"] == preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])
    stored, at_load = load(tmp_path), load(dense, quantization="fp8")
    for a, b in zip(stored.linear_layers(), at_load.linear_layers(), strict=True):
        assert isinstance(a, Fp8Linear) and isinstance(b, Fp8Linear)
        assert torch.equal(a.weight.view(torch.uint8), b.weight.view(torch.uint8))
        assert torch.equal(a.weight_scale, b.weight_scale)


def test_a_group_size_that_does_not_tile_is_refused(dense: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "quantize_rtn.py"), "--model", str(dense),
         "--out", str(tmp_path), "--format", "awq", "--group-size", "96"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "not a multiple of --group-size 96" in done.stderr
