"""GPT-NeoX and Pythia.

LayerNorms with bias, a GELU MLP without gate (exact GELU by default, `hidden_act`), biases on every
linear map (`attention_bias` switches those of the attention off), RoPE rotate-half style on the first
`rotary_pct * head_dim` dims of a head (0.25 unless the config says otherwise). `use_parallel_residual`
(Pythia: true) feeds both branches from the block's input, `x + attn(ln1(x)) + mlp(ln2(x))`; false runs
them one after the other. The fused `query_key_value` output is laid out per head: q, k, v of head 0,
then of head 1, ... The untied output matrix is `embed_out` (transformers v5 names it `lm_head` in memory
and maps it back on save; both names load).
"""

from torch import nn

from ..config import ModelConfig, activation, common_fields, rope
from ..decoder import Decoder, Family
from ..layers import MLP, multi_head_attention

# what transformers' GPTNeoXConfig assumes when a key is absent
DEFAULTS = {"hidden_act": "gelu", "layer_norm_eps": 1e-5, "use_parallel_residual": True, "attention_bias": True,
            "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 2, "max_position_embeddings": 2048}


def parse_config(raw: dict) -> ModelConfig:
    cfg = {**DEFAULTS, **raw}
    d, heads, n = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    if d % heads:
        raise ValueError(f"gpt_neox with hidden_size {d} not divisible by num_attention_heads {heads}")
    head_dim = d // heads
    # the RoPE base and fraction: `rope_parameters` (v5) or `rotary_emb_base` / `rotary_pct` (hub configs)
    params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    base = params.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
    fraction = float(params.get("partial_rotary_factor", cfg.get("rotary_pct", 0.25)))
    theta, scaling = rope({**cfg, "rope_theta": base})
    if scaling is not None:
        scaling.pop("partial_rotary_factor", None)
    rotary_dim = int(head_dim * fraction)
    if rotary_dim % 2:
        raise ValueError(f"gpt_neox with rotary_pct {fraction} rotates an odd number of dims ({rotary_dim})")
    bias = bool(cfg["attention_bias"])
    return ModelConfig(
        model_type="gpt_neox", vocab_size=cfg["vocab_size"], hidden_size=d,
        intermediate_size=cfg["intermediate_size"], num_layers=n, num_heads=heads, num_kv_heads=heads,
        head_dim=head_dim, norm_eps=cfg["layer_norm_eps"], activation=activation(cfg["hidden_act"]),
        layer_types=["full"] * n, rope_theta=theta, rope_scaling=scaling,
        rope=rotary_dim > 0, rotary_dim=rotary_dim, rope_interleaved=False,  # rotary_pct 0: no positions
        parallel_residual=bool(cfg["use_parallel_residual"]), qkv_bias=bias, o_bias=bias, mlp_bias=True,
        tie_embeddings=bool(cfg["tie_word_embeddings"]), **common_fields(cfg))


class GPTNeoXAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.query_key_value = nn.Linear(d, 3 * d, bias=cfg.qkv_bias)
        self.dense = nn.Linear(d, d, bias=cfg.o_bias)
        self.head_dim, self.scale = cfg.head_dim, cfg.scale

    def forward(self, x, attention):
        B, T, _ = x.shape
        qkv = self.query_key_value(x).view(B, T, -1, 3 * self.head_dim)  # per head: q, k, v
        q, k, v = qkv.chunk(3, dim=-1)
        return self.dense(multi_head_attention(q, k, v, attention, self.scale))


class GPTNeoXBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attention = GPTNeoXAttention(cfg)
        self.mlp = MLP(cfg, "dense_h_to_4h", "dense_4h_to_h")  # m = gelu(dense_h_to_4h(h)) enters dense_4h_to_h
        self.parallel = cfg.parallel_residual

    def forward(self, x, attention, mlp_mask, coefficients):
        attn = self.attention(self.input_layernorm(x), attention)
        if self.parallel:
            return self.mlp(self.post_attention_layernorm(x), mlp_mask, coefficients) + attn + x
        x = x + attn
        return self.mlp(self.post_attention_layernorm(x), mlp_mask, coefficients) + x


class GPTNeoXModel(Decoder):
    blocks_path, value_matrix = "gpt_neox.layers", "mlp.dense_4h_to_h"
    embedding_path, final_norm_path, head_path = "gpt_neox.embed_in", "gpt_neox.final_layer_norm", "embed_out"

    def __init__(self, cfg):
        super().__init__(cfg, GPTNeoXBlock, nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps))


# Pythia's tokenizer adds no BOS
FAMILY = Family(model_types=("gpt_neox",), parse_config=parse_config, model=GPTNeoXModel,
                ignored_keys=(".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"),
                renamed_prefixes={"lm_head.": "embed_out."})
