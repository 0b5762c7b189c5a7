"""One normalised model config, whose fields say what differs between families.

Each family file in `minipss/model/families/` turns its config.json into a `ModelConfig`, in either dialect:
hub checkpoints (transformers v4) carry `rope_theta` + `rope_scaling`; v5 `save_pretrained` writes
`rope_parameters` (flat, or nested per layer type for Gemma 3) and explicit `layer_types`. The helpers
here parse what several families share. Shared code reads fields, never a family's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # d_ff: the number of value vectors per layer
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float
    activation: str  # "silu" | "gelu_tanh" | "gelu"
    layer_types: list[str]  # per layer: "full" or "sliding"
    sliding_window: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear"|"llama3"|..., ...} for full layers
    local_rope_theta: float | None = None  # sliding layers' base (Gemma 3); None = rope_theta
    rope: bool = True  # rotary position embeddings (False: learned positions or ALiBi)
    rotary_dim: int | None = None  # rotate only the first rotary_dim dims of a head (GPT-J, GPT-NeoX)
    rope_interleaved: bool = False  # RoPE on pairs (0,1), (2,3), ... (GPT-J) instead of rotate_half
    alibi: bool = False  # ALiBi attention bias instead of positions (MPT)
    alibi_max_bias: float = 8.0
    clip_qkv: float | None = None  # clamp q, k, v to [-c, c] after projection (OLMo, MPT)
    parallel_residual: bool = False  # x + attn(.) + mlp(.) from the same input (GPT-J, NeoX, Falcon)
    parallel_norms: bool = False  # parallel attention and MLP each read their own norm (Falcon's ln_attn, ln_mlp)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sandwich_norms: bool = False  # norms on the attention and MLP outputs too, before the residual (Gemma 2/3)
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over head_dim on q and k before RoPE
    qk_norm_whole: bool = False  # the q/k norms span the whole projection (all heads), before the split
    rope_fp32: bool = False  # RoPE tables kept in fp32: q, k rotated in fp32, then cast back
    attn_scale: float = 0.0  # multiplies q @ k^T; 0 means head_dim ** -0.5
    attn_scale_by_layer: bool = False  # scores further divided by layer + 1 (GPT-2)
    attn_fp32: bool = False  # q, k cast to fp32 after RoPE and the cache: scores in fp32 (GPT-J, GPT-2)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    adds_bos: bool = False  # the tokenizer prepends BOS (tokenizer_config.json's add_bos_token may override)
    max_positions: int | None = None  # max_position_embeddings (n_positions), when the config says

    @property
    def scale(self) -> float:
        return self.attn_scale or self.head_dim ** -0.5


DEFAULT_WINDOW = 4096  # Mistral, Gemma 2/3 and Qwen2/3 when `sliding_window` is absent

ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu_fast": "gelu_tanh"}


def activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def token_ids(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]


def rope(cfg: dict, layer_type: str = "full_attention") -> tuple[float, dict | None]:
    """(theta, scaling) from either dialect; scaling None means plain RoPE."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params:  # nested per layer type (Gemma 3, v5)
        params = params[layer_type]
    if isinstance(params, dict):
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = dict(params)
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = dict(cfg.get("rope_scaling") or {})
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    scaling.pop("rope_theta", None)
    if kind == "dynamic":  # NTK scaling changes nothing up to max_position_embeddings
        kind = "default"
    if kind == "default":
        return float(theta), None
    if kind not in ("linear", "llama3"):
        raise ValueError(f"rope type {kind!r} is not supported (supported: default, linear, llama3)")
    if kind == "llama3":
        scaling.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    return float(theta), {"rope_type": kind, **scaling}


def layer_types(cfg: dict, n: int, default) -> list[str]:
    if cfg.get("layer_types"):
        types = ["sliding" if t == "sliding_attention" else "full" for t in cfg["layer_types"]]
        if len(types) != n:
            raise ValueError(f"layer_types has {len(types)} entries for {n} layers")
        return types
    return ["sliding" if default(i) else "full" for i in range(n)]


def common_fields(cfg: dict, max_positions_key: str = "max_position_embeddings") -> dict:
    """The `ModelConfig` fields every family reads the same way: special tokens and context length."""
    return {"bos_token_id": cfg.get("bos_token_id"), "eos_token_ids": token_ids(cfg.get("eos_token_id")),
            "pad_token_id": cfg.get("pad_token_id"), "max_positions": cfg.get(max_positions_key)}


# ---------------------------------------------------------------- sanity checks, before anything is built

SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings", "n_embd", "n_head", "n_layer",
             "n_inner", "n_positions", "rotary_dim", "sliding_window", "query_pre_attn_scalar")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_raw_sizes(raw, path) -> None:
    """Every size a config.json gives (top level or text_config) is a positive integer; `null` means
    absent. Raises ValueError naming the file and key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: must be a JSON object")
    blocks = [("", raw)] + ([("text_config.", raw["text_config"])] if isinstance(raw.get("text_config"), dict)
                            else [])
    for prefix, block in blocks:
        for key in SIZE_KEYS:
            value = block.get(key)
            if value is not None and not _is_count(value):
                raise ValueError(f"{path}: {prefix}{key} must be a positive integer, got {json.dumps(value)}")


def check_config(cfg: ModelConfig, path) -> None:
    """Refuse a config no model can be built from (sizes, heads, token ids), naming the file and key."""
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim"):
        if not _is_count(getattr(cfg, name)):
            raise ValueError(f"{path}: {name} must be a positive integer, got {getattr(cfg, name)!r}")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ValueError(f"{path}: num_attention_heads ({cfg.num_heads}) is not a multiple of "
                         f"num_key_value_heads ({cfg.num_kv_heads})")
    if not isinstance(cfg.norm_eps, (int, float)) or isinstance(cfg.norm_eps, bool) or not cfg.norm_eps > 0 \
            or cfg.norm_eps == float("inf"):
        raise ValueError(f"{path}: the norm epsilon must be a positive number, got {cfg.norm_eps!r}")
    if cfg.rotary_dim is not None and (not _is_count(cfg.rotary_dim) or cfg.rotary_dim > cfg.head_dim
                                       or cfg.rotary_dim % 2):
        raise ValueError(f"{path}: rotary_dim must be an even positive integer up to the head size "
                         f"{cfg.head_dim}, got {cfg.rotary_dim!r}")
    if cfg.sliding_window is not None and not _is_count(cfg.sliding_window):
        raise ValueError(f"{path}: sliding_window must be a positive integer, got {cfg.sliding_window!r}")
    for name, ids in (("bos_token_id", [cfg.bos_token_id]), ("eos_token_id", cfg.eos_token_ids),
                      ("pad_token_id", [cfg.pad_token_id])):
        for i in ids:
            if i is not None and (isinstance(i, bool) or not isinstance(i, int) or i < 0):
                raise ValueError(f"{path}: {name} must be a token id (an integer >= 0), got {i!r}")
