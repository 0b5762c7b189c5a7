"""GPT-J: parallel residual with one shared LayerNorm, interleaved partial RoPE, biases in the MLP and
the head. Attention scores are computed in fp32 (`attn_fp32`) as in the reference implementation.
"""

from torch import nn

from ..config import ModelConfig, activation, common_fields
from ..decoder import Decoder, Family
from ..layers import MLP, multi_head_attention


def parse_config(cfg: dict) -> ModelConfig:
    d, heads, n = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    return ModelConfig(
        model_type="gptj", vocab_size=cfg["vocab_size"], hidden_size=d,
        intermediate_size=cfg.get("n_inner") or 4 * d, num_layers=n, num_heads=heads,
        num_kv_heads=heads, head_dim=d // heads, norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        activation=activation(cfg.get("activation_function", "gelu_new")), layer_types=["full"] * n,
        rotary_dim=cfg.get("rotary_dim", 64) or d // heads, rope_interleaved=True, parallel_residual=True,
        attn_fp32=True, tie_embeddings=cfg.get("tie_word_embeddings", False), **common_fields(cfg, "n_positions"))


class GPTJAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.head_dim, self.scale, self.fp32 = cfg.head_dim, cfg.scale, cfg.attn_fp32

    def forward(self, x, attention):
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, -1, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(multi_head_attention(q, k, v, attention, self.scale, fp32=self.fp32))


class GPTJBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attn = GPTJAttention(cfg)
        self.mlp = MLP(cfg, "fc_in", "fc_out")  # m = gelu_new(fc_in(h)) enters fc_out

    def forward(self, x, attention, mlp_mask, coefficients):
        h = self.ln_1(x)
        return self.mlp(h, mlp_mask, coefficients) + self.attn(h, attention) + x


class GPTJModel(Decoder):
    blocks_path, value_matrix = "transformer.h", "mlp.fc_out"
    embedding_path, final_norm_path = "transformer.wte", "transformer.ln_f"

    def __init__(self, cfg):
        super().__init__(cfg, GPTJBlock, nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps), head_bias=True)


FAMILY = Family(model_types=("gptj",), parse_config=parse_config, model=GPTJModel,
                ignored_keys=(".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"))
