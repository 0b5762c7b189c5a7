"""OLMo 2 (`olmo2`): LLaMA's keys and gated SiLU MLP; norms after the sublayers instead of before them.

A block is `x = x + post_attention_layernorm(attn(x))`, then `x = x + post_feedforward_layernorm(mlp(x))`:
attention and MLP read the residual stream itself (so m is computed from the unnormalised stream).
`q_norm`/`k_norm` are RMSNorms over the whole projection (width heads * head_dim, resp. kv_heads *
head_dim), before the split into heads and before RoPE. Every RMSNorm multiplies by its weight in fp32 and
then casts; the RoPE tables stay in fp32 (both as in the reference implementation; they matter in bf16).
"""

from dataclasses import replace
from functools import partial

from torch import nn

from ..config import ModelConfig
from ..decoder import Family
from ..layers import GatedMLP, RMSNorm, SelfAttention
from . import olmo
from .llama import LlamaModel


def parse_config(cfg: dict) -> ModelConfig:
    """OLMo 1's fields, with the RMSNorms' `rms_norm_eps`, whole-projection q/k norms and no `clip_qkv`."""
    return replace(olmo.parse_config(cfg), norm_eps=cfg.get("rms_norm_eps", 1e-5), clip_qkv=None,
                   qk_norm=True, qk_norm_whole=True)


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

    def forward(self, x, attention, mlp_mask, coefficients):
        x = x + self.post_attention_layernorm(self.self_attn(x, attention))
        return x + self.post_feedforward_layernorm(self.mlp(x, mlp_mask, coefficients))


class Olmo2Model(LlamaModel):
    """LLaMA's module tree with OLMo 2's post-norm blocks."""

    def __init__(self, cfg):
        super().__init__(cfg, Olmo2Block, rms_norm(cfg, cfg.hidden_size))


# OLMo 2's tokenizer does not prepend BOS (tokenizer_config.json's add_bos_token may say otherwise)
FAMILY = Family(model_types=("olmo2",), parse_config=parse_config, model=Olmo2Model)
