"""LLaMA 1/2/3, Mistral, Yi, Qwen2/1.5/2.5 and Qwen3: pre-norm blocks with a gated SiLU MLP.

Differences are config fields: biases (LLaMA `attention_bias` also on o_proj; Qwen2 q/k/v always),
sliding windows (Mistral, Qwen2 with `use_sliding_window`), Qwen3's q/k norms, rope scaling.
"""

from functools import partial

from torch import nn

from ..config import DEFAULT_WINDOW, ModelConfig, activation, common_fields, layer_types, rope
from ..decoder import Decoder, Family
from ..layers import GatedMLP, RMSNorm, SelfAttention

# GGUF (llama.cpp) architectures of this family -> their HF model_type.
GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2"}
# GGUF tensor-name pieces -> HF ones: `token_embd.weight` -> `model.embed_tokens.weight`,
# `blk.N.<piece>.weight|bias` -> `model.layers.N.<HF piece>.weight|bias`.
GGUF_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def parse_config(cfg: dict) -> ModelConfig:
    mt, n, heads = cfg["model_type"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    theta, scaling = rope(cfg)
    c = ModelConfig(
        model_type=mt, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=n, num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        norm_eps=cfg.get("rms_norm_eps", 1e-6), layer_types=["full"] * n, rope_theta=theta, rope_scaling=scaling,
        activation=activation(cfg.get("hidden_act", "silu")),
        tie_embeddings=cfg.get("tie_word_embeddings", False), adds_bos=mt in ("llama", "mistral"),
        **common_fields(cfg))
    window = cfg.get("sliding_window", DEFAULT_WINDOW)
    if mt == "llama":
        c.qkv_bias = c.o_bias = bool(cfg.get("attention_bias", False))
        c.mlp_bias = bool(cfg.get("mlp_bias", False))
    elif mt == "mistral":
        c.sliding_window = window
        c.layer_types = layer_types(cfg, n, lambda i: window is not None)
    else:  # qwen2, qwen3
        c.qkv_bias = mt == "qwen2" or bool(cfg.get("attention_bias", False))
        c.o_bias = mt == "qwen3" and bool(cfg.get("attention_bias", False))
        c.qk_norm = mt == "qwen3"
        if mt == "qwen3":
            c.head_dim = cfg.get("head_dim") or 128
        on = bool(cfg.get("use_sliding_window", False)) and window is not None
        c.sliding_window = window if on else None
        first = cfg.get("max_window_layers", 28)
        c.layer_types = layer_types(cfg, n, lambda i: on and i >= first) if on else ["full"] * n
    return c


class LlamaBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = partial(RMSNorm, eps=cfg.norm_eps)
        self.input_layernorm = norm(cfg.hidden_size)
        self.self_attn = SelfAttention(cfg, norm)
        self.post_attention_layernorm = norm(cfg.hidden_size)
        self.mlp = GatedMLP(cfg)

    def forward(self, x, attention, mlp_mask, coefficients):
        x = x + self.self_attn(self.input_layernorm(x), attention)
        return x + self.mlp(self.post_attention_layernorm(x), mlp_mask, coefficients)


class LlamaModel(Decoder):
    """LLaMA's module tree: `model.embed_tokens`, `model.layers`, `model.norm`, `lm_head`. Sibling families
    with the same tree (Gemma, OLMo 1/2) subclass it and hand over their own block and final norm."""
    blocks_path, value_matrix = "model.layers", "mlp.down_proj"
    embedding_path, final_norm_path = "model.embed_tokens", "model.norm"

    def __init__(self, cfg, block=LlamaBlock, final_norm: nn.Module | None = None):
        super().__init__(cfg, block, RMSNorm(cfg.hidden_size, cfg.norm_eps) if final_norm is None else final_norm)


# Yi ships as "llama"
FAMILY = Family(model_types=("llama", "mistral", "qwen2", "qwen3"), parse_config=parse_config,
                gguf_archs=GGUF_ARCHS, gguf_names=GGUF_NAMES,
                model=LlamaModel)
