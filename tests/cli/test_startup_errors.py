"""A model the engine cannot load as asked is one line on stderr and exit 2, not a traceback:
the user can fix it (the path, the flag), so the message says what is wrong."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_worker", "--log-level", "error", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def dense_checkpoint(tmp_path: Path) -> Path:
    from tests.oracle import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path / "dense", "llama", 4, 2, 64)


def _refusal(*args: str) -> str:
    done = _cli("generate", "hi", "--max-tokens", "1", *args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_model_that_is_nowhere(tmp_path: Path) -> None:
    line = _refusal("--model", str(tmp_path / "absent"))
    assert line.startswith("llm-worker generate: error: model ") and "neither" in line


def test_int4_asked_of_a_dense_checkpoint(dense_checkpoint: Path) -> None:
    line = _refusal("--model", str(dense_checkpoint), "--quantization", "gptq")
    assert "--quantization gptq needs a checkpoint quantized with it" in line


def test_an_unsupported_quantization_config(dense_checkpoint: Path) -> None:
    config = json.loads((dense_checkpoint / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (dense_checkpoint / "config.json").write_text(json.dumps(config))
    line = _refusal("--model", str(dense_checkpoint))
    assert "quant_method 'bitsandbytes' is not supported" in line


def test_a_block_override_that_cannot_hold_one_sequence(dense_checkpoint: Path) -> None:
    line = _refusal("--model", str(dense_checkpoint), "--device", "cpu",
                    "--num-gpu-blocks-override", "1", "--max-model-len", "256")  # fmt: skip
    assert line.startswith("llm-worker generate: error: the KV cache would hold 16 tokens")
    assert "--max-model-len 16" in line and "--num-gpu-blocks-override 16" in line
