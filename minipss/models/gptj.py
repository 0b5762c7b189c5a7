"""GPT-J: parallel residual with one shared LayerNorm, interleaved partial RoPE, biases in the MLP and
the head. Attention scores are computed in fp32 as in the reference implementation.
"""

from torch import nn

from ..decoder import Decoder
from ..layers import ACT, attend, tap


class GPTJAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.head_dim, self.scale = cfg.head_dim, cfg.scale

    def forward(self, x, rotary, allowed, cache, layer):
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, -1, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotary(q), rotary(k)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = attend(q.float(), k.float(), v, allowed, self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, -1))


class GPTJMLP(nn.Module):
    """`fc_out(gelu_new(fc_in(h)))`: m is the input of fc_out, its columns the value vectors."""

    def __init__(self, cfg):
        super().__init__()
        self.fc_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACT[cfg.activation]

    def forward(self, h, mask=None, taps=None):
        return self.fc_out(tap(self.act(self.fc_in(h)), mask, taps))


class GPTJBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attn = GPTJAttention(cfg)
        self.mlp = GPTJMLP(cfg)

    def forward(self, x, rotary, allowed, cache, layer, mlp_mask, taps):
        h = self.ln_1(x)
        return self.mlp(h, mlp_mask, taps) + self.attn(h, rotary, allowed, cache, layer) + x


class GPTJModel(Decoder):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.transformer.h = nn.ModuleList(GPTJBlock(cfg) for _ in range(cfg.num_layers))
        self.transformer.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def embed(self, input_ids):
        return self.transformer.wte(input_ids)

    def blocks(self):
        return self.transformer.h

    def final_norm(self, x):
        return self.transformer.ln_f(x)

    def tie_weights(self):
        self.lm_head.weight = self.transformer.wte.weight
