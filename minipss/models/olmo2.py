"""OLMo 2 (`olmo2`): LLaMA's keys and gated SiLU MLP; norms after the sublayers instead of before them.

A block is `x = x + post_attention_layernorm(attn(x))`, then `x = x + post_feedforward_layernorm(mlp(x))`:
attention and MLP read the residual stream itself (so m is computed from the unnormalised stream).
`q_norm`/`k_norm` are RMSNorms over the whole projection (width heads * head_dim, resp. kv_heads *
head_dim), before the split into heads and before RoPE. Every RMSNorm multiplies by its weight in fp32 and
then casts; the RoPE tables stay in fp32 (both as in the reference implementation; they matter in bf16).
"""

from functools import partial

from torch import nn

from ..config import ModelConfig, activation, common_fields, rope
from ..decoder import Family
from ..layers import GatedMLP, RMSNorm, SelfAttention
from .llama import LlamaModel


def parse_config(cfg: dict) -> ModelConfig:
    n, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    theta, scaling = rope(cfg)
    bias = bool(cfg.get("attention_bias", False))
    return ModelConfig(
        model_type=cfg["model_type"], vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=n, num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        norm_eps=cfg.get("rms_norm_eps", 1e-5), layer_types=["full"] * n, rope_theta=theta,
        rope_scaling=scaling, rope_fp32=True, activation=activation(cfg.get("hidden_act", "silu")),
        qk_norm=True, qk_norm_whole=True, qkv_bias=bias, o_bias=bias,
        tie_embeddings=cfg.get("tie_word_embeddings", False), **common_fields(cfg))


def rms_norm(cfg: ModelConfig, dim: int) -> RMSNorm:
    return RMSNorm(dim, cfg.norm_eps, weight_in_fp32=True)


class Olmo2Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = partial(rms_norm, cfg)
        self.self_attn = SelfAttention(cfg, norm)  # q_norm, k_norm over the whole projection
        self.post_attention_layernorm = norm(cfg.hidden_size)
        self.mlp = GatedMLP(cfg)  # m = silu(gate_proj(x)) * up_proj(x) enters down_proj
        self.post_feedforward_layernorm = norm(cfg.hidden_size)

    def forward(self, x, attention, mask, coefficients):
        x = x + self.post_attention_layernorm(self.self_attn(x, attention))
        return x + self.post_feedforward_layernorm(self.mlp(x, mask, coefficients))


class Olmo2Model(LlamaModel):
    """LLaMA's module tree with OLMo 2's post-norm blocks."""
    block = Olmo2Block

    @staticmethod
    def final_norm_module(cfg) -> nn.Module:
        return rms_norm(cfg, cfg.hidden_size)


# OLMo 2's tokenizer does not prepend BOS (tokenizer_config.json's add_bos_token may say otherwise)
FAMILY = Family(model_types=("olmo2",), parse_config=parse_config, model=Olmo2Model)
