"""Resolve a model reference to weights on a device: an HF folder, the bundled model, or dummy."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from llm_worker.models.attention import AttentionBackend
from llm_worker.models.bundled import bundled_model_dir
from llm_worker.models.config import NAMED_SHAPES, ModelConfig
from llm_worker.models.llama import CausalLM
from llm_worker.models.quant.checkpoint_config import resolve_quantization
from llm_worker.models.quant.config import describe
from llm_worker.models.quant.linear import ShardedLinear

log = logging.getLogger(__name__)


class ModelNotFound(ValueError):
    pass


@dataclass(frozen=True)
class ModelSource:
    hf_config: dict[str, Any]
    folder: Path | None  # None: a named shape, dummy weights only

    @property
    def has_tokenizer(self) -> bool:
        return self.folder is not None and (self.folder / "tokenizer_config.json").exists()


def resolve(model: str, cache_dir: Path) -> ModelSource:
    if model == "smollm2":
        folder = bundled_model_dir(cache_dir)
    elif model in NAMED_SHAPES:
        return ModelSource(hf_config=NAMED_SHAPES[model], folder=None)
    else:
        folder = Path(model).expanduser()
        if not (folder / "config.json").exists():
            raise ModelNotFound(
                f"model {model!r} is neither 'smollm2', a named shape ({', '.join(NAMED_SHAPES)}) "
                "nor a folder with config.json (weights are never downloaded from a hub)"
            )
    return ModelSource(hf_config=json.loads((folder / "config.json").read_text()), folder=folder)


def _safetensors_weights(folder: Path):  # yields (name, tensor)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFound(f"no *.safetensors in {folder}")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, f.get_tensor(name)


def _fill_dummy(model: CausalLM, seed: int) -> None:
    """Random weights at a realistic scale: N(0, 0.02) matrices (quantized ones drawn so, then
    quantized), unit norms; module by module, in the order named_parameters lists them."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    seen: set[int] = set()  # a tied head shares the embedding's parameter
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if isinstance(module, ShardedLinear):
                module.fill_dummy(gen)
                continue
            for name, param in module.named_parameters(prefix=module_name, recurse=False):
                if id(param) in seen:
                    continue
                seen.add(id(param))
                if "norm" in name:
                    param.fill_(1.0)
                elif name.endswith("bias"):
                    param.zero_()
                else:
                    param.normal_(0.0, 0.02, generator=gen)


def load_model(
    source: ModelSource,
    backend: AttentionBackend,
    dtype: torch.dtype,
    device: torch.device,
    *,
    dummy: bool,
    seed: int,
    max_position: int,
    quantization: str | None = None,
) -> CausalLM:
    """`quantization` is --quantization (fp8, awq, gptq, compressed-tensors): None runs what
    the checkpoint's quantization_config says, if anything; see `resolve_quantization`."""
    cfg = ModelConfig.from_hf(source.hf_config)
    quant = resolve_quantization(source.hf_config, quantization, dummy or source.folder is None)
    with torch.device("meta"):
        model = CausalLM(cfg, backend, quant, dtype)
    model = model.to_empty(device=device)
    if dummy or source.folder is None:
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        _fill_dummy(model, seed)
    else:
        model.load_weights(_safetensors_weights(source.folder))
    model.init_rotary(max_position, device)
    log.info(
        "loaded %s (%s, %.1fM params, %s, %s, weights %s: %.2f GB of matmul weights)",
        source.folder or "dummy",
        cfg.arch,
        cfg.num_params / 1e6,
        dtype,
        device,
        describe(quant),
        model.matmul_weight_bytes() / 1e9,
    )
    return model.eval()
