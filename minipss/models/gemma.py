"""Gemma 1, Gemma 2 and Gemma 3 (text).

All three: RMSNorm with `(1 + w)`, embeddings scaled by sqrt(hidden) (cast to the compute dtype first),
a gated GELU-tanh MLP, tied head. Gemma 2/3 add sandwich norms (note: `post_attention_layernorm` is a
post-norm on the attention output; the pre-MLP norm is `pre_feedforward_layernorm`), the
`query_pre_attn_scalar` scaling, softcaps and sliding layers; Gemma 3 adds q/k norms and a local RoPE base.
"""

from functools import partial

import torch
from torch import nn

from ..decoder import Decoder
from ..layers import GatedMLP, RMSNorm, SelfAttention

# GGUF (llama.cpp) architectures of this family -> their HF model_type.
GGUF_ARCHS = {"gemma3": "gemma3_text"}
# GGUF tensor-name pieces -> HF ones (`blk.N.<piece>` -> `model.layers.N.<HF piece>`). llama.cpp's `ffn_norm`
# is Gemma's pre-MLP norm and `post_attention_norm` its post-norm on the attention output.
GGUF_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}


class GemmaBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = partial(RMSNorm, eps=cfg.norm_eps, offset=True)
        d = cfg.hidden_size
        self.sandwich = cfg.model_type != "gemma"
        self.input_layernorm = norm(d)
        self.self_attn = SelfAttention(cfg, norm)
        self.post_attention_layernorm = norm(d)
        if self.sandwich:
            self.pre_feedforward_layernorm = norm(d)
            self.post_feedforward_layernorm = norm(d)
        self.mlp = GatedMLP(cfg)

    def forward(self, x, rotary, allowed, cache, layer, mlp_mask, taps):
        attn = self.self_attn(self.input_layernorm(x), rotary, allowed, cache, layer)
        if not self.sandwich:  # Gemma 1: LLaMA's block
            x = x + attn
            return x + self.mlp(self.post_attention_layernorm(x), mlp_mask, taps)
        x = x + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(x), mlp_mask, taps)
        return x + self.post_feedforward_layernorm(mlp)


class GemmaModel(Decoder):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(GemmaBlock(cfg) for _ in range(cfg.num_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, offset=True)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed(self, input_ids):
        x = self.model.embed_tokens(input_ids)
        return x * torch.tensor(self.config.hidden_size ** 0.5, dtype=x.dtype)

    def blocks(self):
        return self.model.layers

    def final_norm(self, x):
        return self.model.norm(x)

    def tie_weights(self):
        self.lm_head.weight = self.model.embed_tokens.weight
