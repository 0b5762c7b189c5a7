"""LLaMA 1/2/3, Mistral, Yi, Qwen2/1.5/2.5 and Qwen3: pre-norm blocks with a gated SiLU MLP.

Differences are config fields: biases (LLaMA `attention_bias` also on o_proj; Qwen2 q/k/v always),
sliding windows (Mistral, Qwen2 with `use_sliding_window`), Qwen3's q/k norms, rope scaling.
"""

from functools import partial

from torch import nn

from ..decoder import Decoder
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


class LlamaBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = partial(RMSNorm, eps=cfg.norm_eps)
        self.input_layernorm = norm(cfg.hidden_size)
        self.self_attn = SelfAttention(cfg, norm)
        self.post_attention_layernorm = norm(cfg.hidden_size)
        self.mlp = GatedMLP(cfg)

    def forward(self, x, rotary, allowed, cache, layer, mlp_mask, taps):
        x = x + self.self_attn(self.input_layernorm(x), rotary, allowed, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x), mlp_mask, taps)


class LlamaModel(Decoder):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.num_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed(self, input_ids):
        return self.model.embed_tokens(input_ids)

    def blocks(self):
        return self.model.layers

    def final_norm(self, x):
        return self.model.norm(x)

    def tie_weights(self):
        self.lm_head.weight = self.model.embed_tokens.weight
