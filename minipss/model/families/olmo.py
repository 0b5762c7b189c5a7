"""OLMo 1 (`olmo`): LLaMA's keys, block and gated SiLU MLP, with two differences.

Every norm is a LayerNorm without weight or bias (eps 1e-5, computed in fp32), so the checkpoint has no norm
keys; `clip_qkv` clamps q, k and v to [-c, c] after the projections, before RoPE. The RoPE tables stay in
fp32 (q and k are rotated in fp32, then cast back), as in the reference implementation.
"""

import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, activation, common_fields, rope
from ..decoder import Family
from ..layers import GatedMLP, SelfAttention
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
        norm_eps=1e-5, layer_types=["full"] * n, rope_theta=theta, rope_scaling=scaling, rope_fp32=True,
        activation=activation(cfg.get("hidden_act", "silu")), clip_qkv=cfg.get("clip_qkv"),
        qkv_bias=bias, o_bias=bias, tie_embeddings=cfg.get("tie_word_embeddings", False), **common_fields(cfg))


class LayerNormWithoutWeight(nn.Module):
    """LayerNorm with no learnable weight or bias, normalised in fp32 and cast back."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


class OlmoBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = LayerNormWithoutWeight(cfg.norm_eps)
        self.self_attn = SelfAttention(cfg)
        self.post_attention_layernorm = LayerNormWithoutWeight(cfg.norm_eps)
        self.mlp = GatedMLP(cfg)  # m = silu(gate_proj(h)) * up_proj(h) enters down_proj

    def forward(self, x, attention, mlp_mask, coefficients):
        x = x + self.self_attn(self.input_layernorm(x), attention)
        return x + self.mlp(self.post_attention_layernorm(x), mlp_mask, coefficients)


class OlmoModel(LlamaModel):
    """LLaMA's module tree with OLMo's blocks and weightless LayerNorms."""

    def __init__(self, cfg):
        super().__init__(cfg, OlmoBlock, LayerNormWithoutWeight(cfg.norm_eps))


# OLMo's tokenizer does not prepend BOS (tokenizer_config.json's add_bos_token may say otherwise)
FAMILY = Family(model_types=("olmo",), parse_config=parse_config, model=OlmoModel)
