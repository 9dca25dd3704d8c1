#!/usr/bin/env python
"""Quantize a dense checkpoint (default: the bundled SmolLM2-135M-Instruct) into a folder the
worker loads as a quantized model:

  --format awq  round-to-nearest int4, asymmetric, one fp16 scale and 4-bit zero per group of
                --group-size input channels, in AutoAWQ's GEMM layout (qweight / qzeros /
                scales, quant_method awq); no activation-aware scaling search, so this is the
                plain RTN baseline AWQ improves on
  --format fp8  e4m3 weights with one scale per output channel and dynamic per-token FP8
                activations, as compressed-tensors' FP8_DYNAMIC (float-quantized)

The embeddings, norms and lm_head stay as they are. SmolLM2's hidden size (576) is not a
multiple of 128, so int4 groups of 128 do not tile its q/k/v and gate/up inputs: use 64 there.

  python scripts/quantize_rtn.py --format awq --group-size 64 --out /tmp/smollm2-awq
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llm_worker.config import EngineSettings
from llm_worker.models.loader import resolve
from llm_worker.models.quant.fp8 import quantize_fp8_rows
from llm_worker.models.quant.int4_packing import AWQ_ORDER, pack_columns, rtn_int4

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP8_DYNAMIC_CONFIG = {  # what compressed-tensors' QuantizationConfig dumps for FP8_DYNAMIC
    "quant_method": "compressed-tensors",
    "format": "float-quantized",
    "quantization_status": "compressed",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None,
                        "strategy": "channel", "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "float", "symmetric": True,
                                  "group_size": None, "strategy": "token", "dynamic": True},
            "output_activations": None,
            "format": None,
        }
    },
    "ignore": ["lm_head"],
    "kv_cache_scheme": None,
}  # fmt: skip


def awq_tensors(module: str, weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    n, k = weight.shape
    if k % group_size or n % 8:
        raise SystemExit(
            f"{module}: {k} input features are not a multiple of --group-size {group_size} (or "
            f"{n} outputs of 8); pick a group size that divides {k}"
        )
    q, zeros, scales = rtn_int4(weight, group_size)
    return {
        f"{module}.qweight": pack_columns(q, AWQ_ORDER),
        f"{module}.qzeros": pack_columns(zeros, AWQ_ORDER),
        f"{module}.scales": scales,
    }


def fp8_tensors(module: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    data, scale = quantize_fp8_rows(weight)
    return {f"{module}.weight": data, f"{module}.weight_scale": scale[:, None].contiguous()}


def quantize_folder(source: Path, out: Path, fmt: str, group_size: int) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(source.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = f.get_tensor(name)
                module, _, suffix = name.rpartition(".")
                if suffix != "weight" or module.rsplit(".", 1)[-1] not in PROJECTIONS:
                    tensors[name] = tensor
                elif fmt == "awq":
                    tensors.update(awq_tensors(module, tensor, group_size))
                else:
                    tensors.update(fp8_tensors(module, tensor))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = (
        {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
         "version": "gemm"} if fmt == "awq" else FP8_DYNAMIC_CONFIG
    )  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for extra in source.iterdir():  # tokenizer, chat template, generation config
        if extra.suffix != ".safetensors" and extra.name != "config.json" and extra.is_file():
            shutil.copy(extra, out / extra.name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="'smollm2' or a dense HF folder")
    p.add_argument("--format", choices=("awq", "fp8"), required=True)
    p.add_argument("--group-size", type=int, default=128, help="awq: input channels a group")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    source = resolve(args.model, EngineSettings().cache_dir)
    if source.folder is None or "quantization_config" in source.hf_config:
        sys.exit(f"--model {args.model} must be a dense checkpoint folder")
    quantize_folder(source.folder, args.out, args.format, args.group_size)
    print(f"wrote {args.out} ({args.format})")


if __name__ == "__main__":
    main()
