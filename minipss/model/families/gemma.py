"""Gemma 1, Gemma 2 and Gemma 3 (text).

All three: RMSNorm with `(1 + w)`, embeddings scaled by sqrt(hidden) (cast to the compute dtype first),
a gated GELU-tanh MLP, tied head. Gemma 2/3 add sandwich norms (note: `post_attention_layernorm` is a
post-norm on the attention output; the pre-MLP norm is `pre_feedforward_layernorm`), the
`query_pre_attn_scalar` scaling, softcaps and sliding layers; Gemma 3 adds q/k norms and a local RoPE base.
Multimodal Gemma 3 checkpoints (`gemma3`) are read for their text model only.
"""

from functools import partial

import torch
from torch import nn

from ..config import DEFAULT_WINDOW, ModelConfig, activation, common_fields, layer_types, rope
from ..decoder import Family
from ..layers import GatedMLP, RMSNorm, SelfAttention
from . import llama
from .llama import LlamaModel

# GGUF (llama.cpp) architectures of this family -> their HF model_type.
GGUF_ARCHS = {"gemma3": "gemma3_text"}
# GGUF tensor-name pieces -> HF ones: LLaMA's, without an `output` (the head is tied), and the sandwich norms.
# llama.cpp's `ffn_norm` is Gemma's pre-MLP norm and `post_attention_norm` its post-norm on the attention output.
GGUF_NAMES = {**{piece: name for piece, name in llama.GGUF_NAMES.items() if piece != "output"},
              "post_attention_norm": "post_attention_layernorm",
              "ffn_norm": "pre_feedforward_layernorm",
              "post_ffw_norm": "post_feedforward_layernorm"}


# what HF's config classes assume when a key is absent (hub multimodal Gemma 3 text_config blocks omit many)
GEMMA3_TEXT_DEFAULTS = {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
                        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                        "head_dim": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
                        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}


def parse_config(cfg: dict) -> ModelConfig:
    if cfg["model_type"] == "gemma3":  # multimodal: keep the text part
        if "text_config" not in cfg:
            raise ValueError("model_type 'gemma3' without a text_config")
        ids = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
        cfg = {**GEMMA3_TEXT_DEFAULTS, **ids, **cfg["text_config"], "model_type": "gemma3_text",
               "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
    mt, n, heads = cfg["model_type"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    if cfg.get("hidden_activation"):
        act = activation(cfg["hidden_activation"])
    else:  # older configs: "gelu" (or nothing) meant the tanh approximation
        act = cfg.get("hidden_act") or "gelu"
        act = "gelu_tanh" if act == "gelu" else activation(act)
    theta, scaling = rope(cfg)
    c = ModelConfig(
        model_type=mt, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=n, num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, head_dim=cfg.get("head_dim", 256),
        norm_eps=cfg.get("rms_norm_eps", 1e-6), layer_types=["full"] * n, rope_theta=theta, rope_scaling=scaling,
        activation=act, tie_embeddings=cfg.get("tie_word_embeddings", True), adds_bos=True, **common_fields(cfg))
    if mt == "gemma":
        return c
    window = cfg.get("sliding_window", DEFAULT_WINDOW)
    c.sandwich_norms = True
    c.attn_scale = cfg.get("query_pre_attn_scalar", 256) ** -0.5
    softcaps = (50.0, 30.0) if mt == "gemma2" else (None, None)  # HF's defaults when absent
    c.attn_softcap = cfg.get("attn_logit_softcapping", softcaps[0])
    c.final_softcap = cfg.get("final_logit_softcapping", softcaps[1])
    c.sliding_window = window
    if mt == "gemma2":
        c.layer_types = layer_types(cfg, n, lambda i: (i + 1) % 2 == 1)
        return c
    c.qk_norm = True
    pattern = cfg.get("sliding_window_pattern", 6)
    c.layer_types = layer_types(cfg, n, lambda i: (i + 1) % pattern != 0)
    c.rope_theta, c.rope_scaling = rope({"rope_theta": 1e6, **cfg})
    params = cfg.get("rope_parameters")
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    c.local_rope_theta = float(local["rope_theta"]) if local else float(cfg.get("rope_local_base_freq", 10000.0))
    return c


class GemmaBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = partial(RMSNorm, eps=cfg.norm_eps, offset=True)
        d = cfg.hidden_size
        self.sandwich = cfg.sandwich_norms
        self.input_layernorm = norm(d)
        self.self_attn = SelfAttention(cfg, norm)
        self.post_attention_layernorm = norm(d)
        if self.sandwich:
            self.pre_feedforward_layernorm = norm(d)
            self.post_feedforward_layernorm = norm(d)
        self.mlp = GatedMLP(cfg)

    def forward(self, x, attention, mlp_mask, coefficients):
        attn = self.self_attn(self.input_layernorm(x), attention)
        if not self.sandwich:  # Gemma 1: LLaMA's block
            x = x + attn
            return x + self.mlp(self.post_attention_layernorm(x), mlp_mask, coefficients)
        x = x + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(x), mlp_mask, coefficients)
        return x + self.post_feedforward_layernorm(mlp)


class GemmaModel(LlamaModel):
    """LLaMA's module tree, Gemma's blocks and norms, embeddings scaled by sqrt(hidden)."""

    def __init__(self, cfg):
        super().__init__(cfg, GemmaBlock, RMSNorm(cfg.hidden_size, cfg.norm_eps, offset=True))

    def embeddings(self, input_ids, position_ids):
        x = super().embeddings(input_ids, position_ids)
        return x * torch.tensor(self.config.hidden_size ** 0.5, dtype=x.dtype)


FAMILY = Family(
    gguf_archs=GGUF_ARCHS, gguf_names=GGUF_NAMES,
    model_types=("gemma", "gemma2", "gemma3_text", "gemma3"), parse_config=parse_config, model=GemmaModel,
    renamed_prefixes={"language_model.model.": "model.", "model.language_model.": "model.",
                      "language_model.lm_head.": "lm_head."},
    skipped_prefixes=("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                      "model.multi_modal_projector."))
