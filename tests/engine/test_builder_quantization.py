"""--quantization reaches the model the builder loads: the engine's layers are the quantized
ones, and a refusal is an EngineConfigError naming the option."""

from pathlib import Path

import pytest

from llm_worker.config import EngineSettings
from llm_worker.engine.config import EngineConfigError
from llm_worker.engine.llm_engine import LLMEngine
from llm_worker.schemas import SamplingParams
from tests.oracle import make_tiny_checkpoint


def _engine(**overrides: object) -> LLMEngine:
    values = {"model": "tiny-llama", "load_format": "dummy", "device": "cpu",
              "kv_cache_memory_gb": 0.01, **overrides}  # fmt: skip
    settings = EngineSettings(**values)  # type: ignore[arg-type]
    return LLMEngine.from_settings(settings)


@pytest.mark.parametrize(("quantization", "largest_share"), [("fp8", 0.3), ("awq", 0.2)])
def test_the_setting_reaches_the_model(quantization: str, largest_share: float) -> None:
    dense = _engine().runner.model
    quantized = _engine(quantization=quantization)
    model = quantized.runner.model
    assert model.quant is not None
    # fp32 on the CPU: e4m3 weights are a quarter of the bytes, int4 an eighth, plus scales;
    # the bf16-kept embeddings and head are the same in both.
    head_bytes = dense.lm_head.weight.numel() * dense.lm_head.weight.element_size()
    dense_linear = dense.matmul_weight_bytes() - head_bytes
    quant_linear = model.matmul_weight_bytes() - head_bytes
    assert quant_linear < largest_share * dense_linear
    out = quantized.generate([[3, 5, 7, 9]], SamplingParams(temperature=0, max_tokens=4))
    assert len(out[0].output_token_ids) == 4


def test_a_refusal_is_an_engine_config_error(tmp_path: Path) -> None:
    folder = make_tiny_checkpoint(tmp_path / "dense", "llama", 4, 2, 64)
    with pytest.raises(EngineConfigError, match="--quantization awq needs a checkpoint"):
        _engine(model=str(folder), load_format="auto", quantization="awq")
