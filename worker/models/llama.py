"""Llama, Qwen2 and Qwen3 decoder over the paged KV cache (they differ in biases and q/k norms).

Projections are fused at load time (q|k|v and gate|up) so a layer runs four GEMMs, not seven.
Parameter names follow HF checkpoints except for the fused ones, which `load_weights` maps.
"""

from collections.abc import Iterable

import torch
from torch import nn

from llm_worker.models.attention import UNIT_KV_SCALE, AttentionBackend, AttentionMetadata
from llm_worker.models.config import ModelConfig
from llm_worker.models.elementwise import ElementwiseOps
from llm_worker.models.kv_cache_format import is_kv_scale_name
from llm_worker.models.layers import RMSNorm, rotary_cos_sin_cache

KVCache = tuple[
    torch.Tensor, torch.Tensor
]  # k, v: [num_blocks, block_size, num_kv_heads, head_dim]

# HF name fragment -> (fused parameter fragment, shard index)
_FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: ElementwiseOps) -> None:
        super().__init__()
        self.ops = ops
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.shard_sizes = (self.q_size, self.kv_size, self.kv_size)
        self.qkv_proj = nn.Linear(cfg.hidden_size, sum(self.shard_sizes), bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, ops) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, ops) if cfg.qk_norm else None
        self.scale = cfg.head_dim**-0.5
        self.kv_scale = UNIT_KV_SCALE  # an FP8 cache's (kv_cache_format.apply_kv_scales)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        kv: KVCache,
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.shard_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q)[0]
            k = self.k_norm(k)[0]
        q, k = self.ops.rotary_embedding(positions, q, k, cos_sin)
        out = backend.forward(q, k, v, kv[0], kv[1], meta, self.scale, self.kv_scale)
        return self.o_proj(out.reshape(num_tokens, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: ElementwiseOps) -> None:
        super().__init__()
        self.ops = ops
        self.shard_sizes = (cfg.intermediate_size, cfg.intermediate_size)
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: ElementwiseOps) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.self_attn = Attention(cfg, ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.mlp = MLP(cfg, ops)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: ElementwiseOps) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, ops) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.config = cfg
        self.backend = backend
        self.model = Decoder(cfg, backend.ops)  # the backend's norms, rotary and SiLU*mul
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.cos_sin_cache = torch.empty(0)

    def init_rotary(self, max_position: int, device: torch.device) -> None:
        cfg = self.config
        self.cos_sin_cache = rotary_cos_sin_cache(
            cfg.head_dim, max_position, cfg.rope_theta, cfg.rope_scaling, device
        )

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        positions: torch.Tensor,  # [num_tokens] int64
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, hidden_size]
        h = self.model.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for layer, kv in zip(self.model.layers, kv_caches, strict=True):
            assert isinstance(layer, DecoderLayer)
            x, residual = layer.input_layernorm(h, residual)
            h = layer.self_attn(x, positions, self.cos_sin_cache, kv, meta, self.backend)
            x, residual = layer.post_attention_layernorm(h, residual)
            h = layer.mlp(x)
        return self.model.norm(h, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, vocab] fp32
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb" in name or is_kv_scale_name(name):  # KV scales: kv_cache_format
                continue
            target, shard = name, None
            for fragment, (fused, index) in _FUSED.items():
                if f".{fragment}." in name:
                    target, shard = name.replace(fragment, fused), index
                    break
            if target not in params:
                raise KeyError(f"checkpoint tensor {name!r} has no place in {self.config.arch}")
            param = params[target]
            with torch.no_grad():
                if shard is None:
                    param.copy_(tensor)
                else:
                    sizes = self._shard_sizes(target)
                    start = sum(sizes[:shard])
                    param[start : start + sizes[shard]].copy_(tensor)
            loaded.add(target)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
            loaded.add("lm_head.weight")
        missing = set(params) - loaded
        if missing:
            raise KeyError(f"checkpoint lacks {sorted(missing)[:5]} ({len(missing)} tensors)")

    def _shard_sizes(self, fused_name: str) -> tuple[int, ...]:
        module_name = fused_name.rsplit(".", 1)[0].rsplit(".", 1)[0]
        module = self.get_submodule(module_name)
        return module.shard_sizes  # type: ignore[return-value]
