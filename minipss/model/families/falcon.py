"""Falcon (7B, 40B, 180B, Falcon 2): LayerNorm blocks with an ungated GELU MLP, rotate_half RoPE over the
whole head, a fused `query_key_value` projection and a tied head by default.

Three block layouts, chosen as transformers' `FalconDecoderLayer` chooses them:
- `new_decoder_architecture` (40B/180B): parallel attention and MLP, read from `ln_attn` and `ln_mlp`
  (`num_ln_in_parallel_attn` 2, the default there) or from one `input_layernorm` (1, Falcon 2);
- otherwise `parallel_attn` (7B): one `input_layernorm` feeds both;
- otherwise sequential: `input_layernorm`, attention, `post_attention_layernorm`, MLP.

The fused projection always reads as groups `[kv_heads, q_per_kv + 2, head_dim]`: each group's query
heads, then its key, then its value. The three layouts are three group counts: `num_kv_heads` in the new
architecture, 1 with `multi_query` (7B: `[heads + 2, head_dim]`), `num_heads` otherwise (`[heads, 3,
head_dim]`). Falcon with ALiBi (`alibi: true`, the early RW-1B style) is refused.
"""

from torch import nn

from ..config import ModelConfig, activation, common_fields, rope
from ..decoder import Decoder, Family
from ..layers import MLP, multi_head_attention


def parse_config(cfg: dict) -> ModelConfig:
    if cfg.get("alibi", False):
        raise ValueError("falcon with alibi=true is not supported (only rotary Falcon models are)")
    d = cfg.get("n_embed") or cfg["hidden_size"]  # n_embed: the older name, read as transformers does
    heads, n = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    if d % heads:
        raise ValueError(f"falcon hidden_size {d} is not a multiple of num_attention_heads {heads}")
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    parallel = bool(cfg.get("parallel_attn", True))
    norms = cfg.get("num_ln_in_parallel_attn")
    if norms not in (None, 1, 2):
        raise ValueError(f"falcon num_ln_in_parallel_attn={norms!r} is not supported (1 or 2)")
    if new_arch:
        if not parallel:
            raise ValueError("falcon with new_decoder_architecture=true and parallel_attn=false is not supported "
                             "(transformers cannot run it either)")
        kv = cfg.get("num_kv_heads") or heads
    else:
        if parallel and norms == 2:
            raise ValueError("falcon with num_ln_in_parallel_attn=2 needs new_decoder_architecture=true")
        multi_query = bool(cfg.get("multi_query", True))
        kv = 1 if multi_query else heads
        if not multi_query and cfg.get("num_kv_heads") not in (None, heads):
            raise ValueError("falcon num_kv_heads must equal num_attention_heads without multi_query or "
                             "new_decoder_architecture")
    if heads % kv:
        raise ValueError(f"falcon num_attention_heads {heads} is not a multiple of num_kv_heads {kv}")
    theta, scaling = rope(cfg)
    bias = bool(cfg.get("bias", False))
    return ModelConfig(
        model_type="falcon", vocab_size=cfg["vocab_size"], hidden_size=d,
        intermediate_size=cfg.get("ffn_hidden_size") or 4 * d, num_layers=n, num_heads=heads, num_kv_heads=kv,
        head_dim=d // heads, norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        activation=activation(cfg.get("activation", "gelu")), layer_types=["full"] * n, rope_theta=theta,
        rope_scaling=scaling, parallel_residual=parallel, parallel_norms=new_arch and norms in (None, 2),
        qkv_bias=bias, o_bias=bias, mlp_bias=bias,
        tie_embeddings=cfg.get("tie_word_embeddings", True), **common_fields(cfg))


class FalconAttention(nn.Module):
    """The fused projection split as `[kv_heads, q_per_kv + 2, head_dim]` groups (see the module doc)."""

    def __init__(self, cfg):
        super().__init__()
        d, hd, kv = cfg.hidden_size, cfg.head_dim, cfg.num_kv_heads
        self.query_key_value = nn.Linear(d, (cfg.num_heads + 2 * kv) * hd, bias=cfg.qkv_bias)
        self.dense = nn.Linear(cfg.num_heads * hd, d, bias=cfg.o_bias)
        self.kv_heads, self.head_dim, self.scale = kv, hd, cfg.scale

    def forward(self, x, context):
        B, T, _ = x.shape
        groups = self.query_key_value(x).view(B, T, self.kv_heads, -1, self.head_dim)
        q = groups[:, :, :, :-2].reshape(B, T, -1, self.head_dim)  # head h reads kv group h // q_per_kv
        k, v = groups[:, :, :, -2], groups[:, :, :, -1]
        return self.dense(multi_head_attention(q, k, v, context, self.scale))


class FalconBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.norm_eps
        self.parallel = cfg.parallel_residual
        self.two_norms = cfg.parallel_norms
        if self.two_norms:
            self.ln_attn = nn.LayerNorm(d, eps=eps)
            self.ln_mlp = nn.LayerNorm(d, eps=eps)
        else:
            self.input_layernorm = nn.LayerNorm(d, eps=eps)
        if not self.parallel:
            self.post_attention_layernorm = nn.LayerNorm(d, eps=eps)
        self.self_attention = FalconAttention(cfg)
        self.mlp = MLP(cfg, "dense_h_to_4h", "dense_4h_to_h", bias=cfg.mlp_bias)  # m enters dense_4h_to_h

    def forward(self, x, attention, mlp_mask, coefficients):
        if self.two_norms:
            h_attn, h_mlp = self.ln_attn(x), self.ln_mlp(x)
        else:
            h_attn = h_mlp = self.input_layernorm(x)
        attn = self.self_attention(h_attn, attention)
        if self.parallel:
            return x + (self.mlp(h_mlp, mlp_mask, coefficients) + attn)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x), mlp_mask, coefficients)


class FalconModel(Decoder):
    blocks_path, value_matrix = "transformer.h", "mlp.dense_4h_to_h"
    embedding_path, final_norm_path = "transformer.word_embeddings", "transformer.ln_f"

    def __init__(self, cfg):
        super().__init__(cfg, FalconBlock, nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps))


# "RefinedWeb"/"RefinedWebModel" (the pre-transformers names) are not mapped by transformers: not served
FAMILY = Family(model_types=("falcon",), parse_config=parse_config, model=FalconModel)
