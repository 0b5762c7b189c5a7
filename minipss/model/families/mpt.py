"""MPT (MosaicML MPT-7B/30B): pre-norm blocks with LayerNorms without bias, no position embeddings but
ALiBi, a fused `Wqkv` projection (optionally clamped by `clip_qkv`), an ungated GELU MLP, a tied head
(unless `tie_word_embeddings` is false).

The attention options live in the nested `attn_config` dict (absent keys take transformers' defaults);
`clip_qkv` and `softmax_scale` are read from it. The ALiBi bias depends on the key's index only
(`layers.alibi_bias`), so a left-padded row attends as the same row run alone. Refused, because
transformers' MPT ignores them (it would run such a checkpoint as something else, or not load it): linear
or LayerNorm biases (`no_bias: false`), `qk_ln`, multi-query or grouped attention, prefix-LM,
`alibi: false` (learned positions), `alibi_bias_max` other than 8, `expansion_ratio` other than 4,
`logit_scale` and norms other than LayerNorm.
"""

from torch import nn

from ..config import ModelConfig, common_fields
from ..decoder import Decoder, Family
from ..layers import MLP, multi_head_attention

# transformers' MptAttentionConfig defaults, for keys an attn_config leaves out
ATTN_DEFAULTS = {"attn_type": "multihead_attention", "clip_qkv": None, "softmax_scale": None, "prefix_lm": False,
                 "qk_ln": False, "alibi": True, "alibi_bias_max": 8}


def parse_config(cfg: dict) -> ModelConfig:
    attn = {**ATTN_DEFAULTS, **(cfg.get("attn_config") or {})}
    refused = {"no_bias": (not cfg.get("no_bias", True), "false"),
               "attn_config.qk_ln": (attn["qk_ln"], "true"),
               "attn_config.prefix_lm": (attn["prefix_lm"], "true"),
               "attn_config.alibi": (not attn["alibi"], "false"),
               "attn_config.alibi_bias_max": (attn["alibi_bias_max"] != 8, repr(attn["alibi_bias_max"])),
               "expansion_ratio": (cfg.get("expansion_ratio", 4) != 4, repr(cfg.get("expansion_ratio"))),
               "attn_config.attn_type": (attn["attn_type"] != "multihead_attention", repr(attn["attn_type"])),
               "logit_scale": (cfg.get("logit_scale") is not None, repr(cfg.get("logit_scale"))),
               "norm_type": ("layernorm" not in (cfg.get("norm_type") or "layernorm"), repr(cfg.get("norm_type")))}
    for key, (bad, value) in refused.items():
        if bad:
            raise ValueError(f"mpt with {key}={value} is not supported (transformers' MPT does not implement it)")
    # transformers' aliases (hidden_size, num_attention_heads, num_hidden_layers) accepted too
    d = cfg.get("hidden_size") or cfg["d_model"]
    heads = cfg.get("num_attention_heads") or cfg["n_heads"]
    n = cfg.get("num_hidden_layers") or cfg["n_layers"]
    if d % heads:
        raise ValueError(f"mpt d_model {d} is not a multiple of n_heads {heads}")
    return ModelConfig(
        model_type="mpt", vocab_size=cfg["vocab_size"], hidden_size=d,
        intermediate_size=4 * d, num_layers=n, num_heads=heads, num_kv_heads=heads, head_dim=d // heads, norm_eps=cfg.get("layer_norm_epsilon", 1e-5), activation="gelu",
        layer_types=["full"] * n, rope=False, alibi=True, alibi_max_bias=8.0,
        clip_qkv=attn["clip_qkv"], attn_scale=attn["softmax_scale"] or 0.0,
        tie_embeddings=cfg.get("tie_word_embeddings", True), **common_fields(cfg, "max_seq_len"))


class MptAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.Wqkv = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.head_dim, self.scale, self.clip = cfg.head_dim, cfg.scale, cfg.clip_qkv

    def forward(self, x, context):
        B, T, _ = x.shape
        qkv = self.Wqkv(x)
        if self.clip:
            qkv = qkv.clamp(-self.clip, self.clip)
        q, k, v = (t.reshape(B, T, -1, self.head_dim) for t in qkv.chunk(3, dim=-1))
        return self.out_proj(multi_head_attention(q, k, v, context, self.scale))  # ALiBi is in context.allowed


class MptBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.norm_eps
        self.norm_1 = nn.LayerNorm(d, eps=eps, bias=False)
        self.attn = MptAttention(cfg)
        self.norm_2 = nn.LayerNorm(d, eps=eps, bias=False)
        self.ffn = MLP(cfg, "up_proj", "down_proj", bias=False)  # m = gelu(up_proj(h)) enters down_proj

    def forward(self, x, attention, mlp_mask, coefficients):
        x = x + self.attn(self.norm_1(x), attention)
        return x + self.ffn(self.norm_2(x), mlp_mask, coefficients)


class MptModel(Decoder):
    """No position embeddings: ALiBi, in the attention."""
    blocks_path, value_matrix = "transformer.blocks", "ffn.down_proj"
    embedding_path, final_norm_path = "transformer.wte", "transformer.norm_f"

    def __init__(self, cfg):
        super().__init__(cfg, MptBlock, nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=False))


FAMILY = Family(model_types=("mpt",), parse_config=parse_config, model=MptModel)
