"""GPT-2.

Learned absolute positions added to the token embeddings, pre-LayerNorm blocks, a GELU MLP without gate
(`activation_function`, "gelu_new" = the tanh approximation by default), biases on every linear map,
tied head unless `tie_word_embeddings` is false. The checkpoint stores its linear maps as Conv1D weights
`[in, out]`; here they are ordinary `nn.Linear` modules named as the checkpoint, transposed on load and
back on save (`Family.transposed`). Attention scores are scaled by head_dim^-1/2 (`scale_attn_weights`),
further by 1/(layer + 1) with `scale_attn_by_inverse_layer_idx`; `reorder_and_upcast_attn` computes the
scores and their softmax in fp32 whatever the model's dtype. Hub checkpoints often store the keys without
the `transformer.` prefix (`h.0.attn.c_attn.weight`, `wte.weight`): both load.

Where transformers differs in low precision: its eager GPT-2 attention takes the softmax in the model's
dtype; here the softmax runs in fp32 as for every other family (equal in fp32).
"""

from torch import nn

from ..config import ModelConfig, activation, common_fields
from ..decoder import Decoder, Family
from ..layers import MLP, multi_head_attention

# what transformers' GPT2Config assumes when a key is absent
DEFAULTS = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "n_inner": None,
            "n_positions": 1024, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True,
            "bos_token_id": 50256, "eos_token_id": 50256}
ALIASES = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
           "max_position_embeddings": "n_positions"}  # transformers' attribute_map: either name is read


def parse_config(raw: dict) -> ModelConfig:
    cfg = {**DEFAULTS, **{ALIASES.get(k, k): v for k, v in raw.items()}}
    if cfg["add_cross_attention"]:
        raise ValueError("gpt2 with add_cross_attention=true is not supported (decoder-only models only)")
    d, heads, n = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    if d % heads:
        raise ValueError(f"gpt2 with n_embd {d} not divisible by n_head {heads}")
    return ModelConfig(
        model_type="gpt2", vocab_size=cfg["vocab_size"], hidden_size=d,
        intermediate_size=cfg["n_inner"] or 4 * d, num_layers=n, num_heads=heads, num_kv_heads=heads,
        head_dim=d // heads, norm_eps=cfg["layer_norm_epsilon"],
        activation=activation(cfg["activation_function"]), layer_types=["full"] * n, rope=False,
        attn_scale=(d // heads) ** -0.5 if cfg["scale_attn_weights"] else 1.0,
        attn_scale_by_layer=bool(cfg["scale_attn_by_inverse_layer_idx"]),
        attn_fp32=bool(cfg["reorder_and_upcast_attn"]),
        qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=bool(cfg["tie_word_embeddings"]),
        **common_fields(cfg, "n_positions"))


class GPT2Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_size
        self.c_attn = nn.Linear(d, 3 * d)  # q, k, v one after the other, each [heads, head_dim]
        self.c_proj = nn.Linear(d, d)
        self.head_dim, self.scale = cfg.head_dim, cfg.scale
        self.by_layer, self.fp32 = cfg.attn_scale_by_layer, cfg.attn_fp32

    def forward(self, x, attention):
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, -1, self.head_dim) for t in self.c_attn(x).chunk(3, dim=-1))
        scale = self.scale / (attention.layer + 1) if self.by_layer else self.scale
        return self.c_proj(multi_head_attention(q, k, v, attention, scale, fp32=self.fp32))


class GPT2Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.mlp = MLP(cfg, "c_fc", "c_proj")  # m = gelu_new(c_fc(h)) enters c_proj

    def forward(self, x, attention, mlp_mask, coefficients):
        x = x + self.attn(self.ln_1(x), attention)
        return x + self.mlp(self.ln_2(x), mlp_mask, coefficients)


class GPT2Model(Decoder):
    blocks_path, value_matrix = "transformer.h", "mlp.c_proj"
    embedding_path, positions_path, final_norm_path = "transformer.wte", "transformer.wpe", "transformer.ln_f"

    def __init__(self, cfg):
        super().__init__(cfg, GPT2Block, nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps))

    def embeddings(self, input_ids, position_ids):
        if position_ids.numel() and int(position_ids.max()) >= self.config.max_positions:
            raise ValueError(f"position {int(position_ids.max())} is past gpt2's n_positions "
                             f"({self.config.max_positions}): the sequence is too long for this model")
        return super().embeddings(input_ids, position_ids)


# GPT-2's tokenizer adds no BOS (<|endoftext|> is BOS, EOS and, in practice, padding)
FAMILY = Family(model_types=("gpt2",), parse_config=parse_config, model=GPT2Model,
                ignored_keys=(".attn.bias", ".attn.masked_bias"),
                transposed=(".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"),
                renamed_prefixes={"h.": "transformer.h.", "wte.": "transformer.wte.", "wpe.": "transformer.wpe.",
                                  "ln_f.": "transformer.ln_f."})
