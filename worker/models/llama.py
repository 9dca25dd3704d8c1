"""Llama, Qwen2 and Qwen3 decoder over the paged KV cache (they differ in biases and q/k norms).

Projections are fused (q|k|v and gate|up) so a layer runs four GEMMs, not seven; each is a
`ShardedLinear` in the activation dtype or quantized (worker/models/quant/), its shards loaded
from the checkpoint's separate modules. The head and the embeddings stay in the activation dtype.
"""

from collections.abc import Iterable

import torch
from torch import nn

from llm_worker.models.attention import UNIT_KV_SCALE, AttentionBackend, AttentionMetadata
from llm_worker.models.config import ModelConfig
from llm_worker.models.elementwise import ElementwiseOps
from llm_worker.models.kv_cache_format import is_kv_scale_name
from llm_worker.models.layers import RMSNorm, rotary_cos_sin_cache
from llm_worker.models.quant.config import QuantConfig
from llm_worker.models.quant.factory import LinearFactory
from llm_worker.models.quant.gemms import gemms_for
from llm_worker.models.quant.linear import CheckpointMismatch, LinearInput, ShardedLinear

KVCache = tuple[
    torch.Tensor, torch.Tensor
]  # k, v: [num_blocks, block_size, num_kv_heads, head_dim]


class Attention(nn.Module):
    def __init__(
        self, cfg: ModelConfig, ops: ElementwiseOps, linears: LinearFactory, prefix: str
    ) -> None:
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
        qkv_names = tuple(f"{prefix}.{name}" for name in ("q_proj", "k_proj", "v_proj"))
        self.qkv_proj = linears(qkv_names, cfg.hidden_size, self.shard_sizes, cfg.attention_bias)
        self.o_proj = linears((f"{prefix}.o_proj",), self.q_size, (cfg.hidden_size,), False)
        dtype = linears.dtype
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, ops, dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, ops, dtype) if cfg.qk_norm else None
        self.scale = cfg.head_dim**-0.5
        self.kv_scale = UNIT_KV_SCALE  # an FP8 cache's (kv_cache_format.apply_kv_scales)

    def forward(
        self,
        x: LinearInput,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        kv: KVCache,
        meta: AttentionMetadata,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        num_tokens = qkv.shape[0]
        q, k, v = qkv.split(self.shard_sizes, dim=-1)
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
    def __init__(self, cfg: ModelConfig, linears: LinearFactory, prefix: str) -> None:
        super().__init__()
        self.shard_sizes = (cfg.intermediate_size, cfg.intermediate_size)
        gate_up_names = (f"{prefix}.gate_proj", f"{prefix}.up_proj")
        self.gate_up_proj = linears(gate_up_names, cfg.hidden_size, self.shard_sizes, False)
        self.down_proj = linears(
            (f"{prefix}.down_proj",), cfg.intermediate_size, (cfg.hidden_size,), False
        )

    def forward(self, x: LinearInput) -> torch.Tensor:
        return self.down_proj(self.down_proj.silu_and_mul_input(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(
        self, cfg: ModelConfig, ops: ElementwiseOps, linears: LinearFactory, prefix: str
    ) -> None:
        super().__init__()
        dtype = linears.dtype
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype)
        self.self_attn = Attention(cfg, ops, linears, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype)
        self.mlp = MLP(cfg, linears, f"{prefix}.mlp")


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: ElementwiseOps, linears: LinearFactory) -> None:
        super().__init__()
        dtype = linears.dtype
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, ops, linears, f"model.layers.{i}") for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops, dtype)


class CausalLM(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        backend: AttentionBackend,
        quant: QuantConfig | None = None,
        dtype: torch.dtype | None = None,  # activations, embeddings, norms, head (default fp32)
    ) -> None:
        super().__init__()
        self.config = cfg
        self.backend = backend
        self.quant = quant
        dtype = dtype or torch.get_default_dtype()
        linears = LinearFactory(quant, backend.ops, gemms_for(backend.name), dtype)
        self.model = Decoder(cfg, backend.ops, linears)  # the backend's norms, rotary, SiLU*mul
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
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
            attn, mlp = layer.self_attn, layer.mlp
            # each norm's output comes in the form the GEMM after it takes (FP8 or not)
            x, residual = attn.qkv_proj.rms_norm_input(layer.input_layernorm, h, residual)
            h = attn(x, positions, self.cos_sin_cache, kv, meta, self.backend)
            x, residual = mlp.gate_up_proj.rms_norm_input(layer.post_attention_layernorm, h,
                                                          residual)  # fmt: skip
            h = mlp(x)
        return self.model.norm(h, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, vocab] fp32
        return self.lm_head(hidden).float()

    def linear_layers(self) -> list[ShardedLinear]:
        return [m for m in self.modules() if isinstance(m, ShardedLinear)]

    def matmul_weight_bytes(self) -> int:
        """Bytes of the weights every token multiplies through, as stored (quantized layers
        with their scales and zeros): what a batch-1 decode step must read."""
        head = self.lm_head.weight
        linear_bytes = sum(m.weight_bytes() for m in self.linear_layers())
        return linear_bytes + head.numel() * head.element_size()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Checkpoint tensors by their HF names: those of a linear layer's modules go to it,
        the rest (embeddings, norms, head) are copied into the parameter of the same name."""
        shards = {
            name: (linear, shard)
            for linear in self.linear_layers()
            for shard, name in enumerate(linear.spec.names)
        }
        params = _unfused_parameters(self)
        loaded: set[str] = set()
        for name, tensor in weights:
            module_name, _, suffix = name.rpartition(".")
            if "rotary_emb" in name or is_kv_scale_name(name):
                continue  # rotary: recomputed; KV-cache scales (k_proj.output_scale too): read
                # by kv_cache_format
            elif module_name in shards:
                linear, shard = shards[module_name]
                linear.load(suffix, shard, tensor)
            elif name not in params:
                raise KeyError(f"checkpoint tensor {name!r} has no place in {self.config.arch}")
            else:
                _copy_parameter(name, params[name], tensor)
                loaded.add(name)
        for linear in self.linear_layers():
            linear.finish_loading()
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
            loaded.add("lm_head.weight")
        missing = set(params) - loaded
        if missing:
            raise KeyError(f"checkpoint lacks {sorted(missing)[:5]} ({len(missing)} tensors)")


def _unfused_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters outside the linear layers (which load their own tensors)."""
    inside = {
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        if isinstance(module, ShardedLinear)
        for name, _ in module.named_parameters()
    }
    return {name: p for name, p in model.named_parameters() if name not in inside}


def _copy_parameter(name: str, param: nn.Parameter, tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point() or tensor.element_size() == 1:
        raise CheckpointMismatch(
            f"checkpoint tensor {name} is {tensor.dtype}: only the linear layers the "
            "quantization config names take quantized tensors"
        )
    if tensor.shape != param.shape:
        raise CheckpointMismatch(
            f"checkpoint tensor {name} is {list(tensor.shape)}; expected {list(param.shape)}"
        )
    with torch.no_grad():
        param.copy_(tensor)
