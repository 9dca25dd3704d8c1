"""A tiny model with the fused elementwise kernels forced on gives the torch path's hidden states
(fp32; the CPU interpreter, or the GPU where there is one): a prefill of two sequences, then a
decode step over their cache."""

import dataclasses

import pytest
import torch

from llm_worker.models.attention import TORCH_BACKEND, AttentionMetadata
from llm_worker.models.elementwise import triton_ops
from llm_worker.models.llama import CausalLM
from llm_worker.models.loader import ModelSource, load_model

BLOCK_SIZE = 16
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tiny(arch: str) -> ModelSource:
    return ModelSource(
        hf_config={
            "architectures": [arch], "vocab_size": 64, "hidden_size": 96,
            "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 6,
            "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 64,
        },
        folder=None,
    )  # fmt: skip


def _model(source: ModelSource, fused: bool) -> CausalLM:
    backend = dataclasses.replace(TORCH_BACKEND, ops=triton_ops()) if fused else TORCH_BACKEND
    model = load_model(source, backend, torch.float32, DEVICE, dummy=True, seed=3,
                       max_position=64)  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # dummy norms are ones; random ones test the weight multiply too
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen).to(DEVICE))
    return model


def _meta(q_lens: list[int], seq_lens: list[int]) -> AttentionMetadata:
    """Sequence i owns block i; its new tokens are the last q_lens[i] of seq_lens[i]."""
    slots = [i * BLOCK_SIZE + p for i, (q, s) in enumerate(zip(q_lens, seq_lens, strict=True))
             for p in range(s - q, s)]  # fmt: skip
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, device=DEVICE),
        block_tables=torch.arange(len(q_lens), dtype=torch.int32, device=DEVICE)[:, None],
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        cu_seqlens_q=torch.tensor(
            [0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE
        ),
        max_seqlen_q=max(q_lens),
        max_seqlen_k=max(seq_lens),
    )


def _run(model: CausalLM) -> list[torch.Tensor]:
    cfg = model.config
    shape = (2, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim)
    kv = [(torch.zeros(shape, device=DEVICE), torch.zeros(shape, device=DEVICE))
          for _ in range(cfg.num_layers)]  # fmt: skip
    ids = torch.arange(9, device=DEVICE) * 7 % cfg.vocab_size
    positions = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3], device=DEVICE)
    with torch.inference_mode():
        prefill = model(ids, positions, kv, _meta([5, 4], [5, 4]))
        decode = model(ids[:2], torch.tensor([5, 4], device=DEVICE), kv, _meta([1, 1], [6, 5]))
    return [prefill, decode]


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"])
def test_fused_forward_matches_torch_path(arch: str) -> None:
    source = _tiny(arch)
    fused = _model(source, True)
    assert {m.ops.name for m in fused.modules() if hasattr(m, "ops")} == {"triton"}
    for got, want in zip(_run(fused), _run(_model(source, False)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
