"""One normalised model config, built from a Hugging Face `config.json` in either dialect.

Hub checkpoints (transformers v4) carry `rope_theta` + `rope_scaling`; v5 `save_pretrained` writes
`rope_parameters` (flat, or nested per layer type for Gemma 3) and explicit `layer_types`. Both parse to
the same `ModelConfig`, whose fields say what differs between families (see spec/architectures.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# model_type -> family file in minipss/models/
FAMILIES = {
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",  # Yi ships as "llama"
    "gptj": "gptj",
    "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma",
}


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
    rotary_dim: int | None = None  # rotate only the first rotary_dim dims of a head (GPT-J)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over head_dim on q and k before RoPE
    attn_scale: float = 0.0  # multiplies q @ k^T; 0 means head_dim ** -0.5
    attn_softcap: float | None = None
    final_softcap: float | None = None
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    raw: dict = field(default_factory=dict, repr=False)  # the config.json it came from

    @property
    def family(self) -> str:
        return FAMILIES[self.model_type]

    @property
    def scale(self) -> float:
        return self.attn_scale or self.head_dim ** -0.5


# what HF's config classes assume when a key is absent (hub multimodal Gemma 3 text_config blocks omit many)
GEMMA3_TEXT_DEFAULTS = {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
                        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                        "head_dim": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
                        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
DEFAULT_WINDOW = 4096  # Mistral, Gemma 2/3 and Qwen2/3 when `sliding_window` is absent

ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu_fast": "gelu_tanh"}


def _activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _ids(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]


def _rope(cfg: dict, layer_type: str = "full_attention") -> tuple[float, dict | None]:
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


def _layer_types(cfg: dict, n: int, default) -> list[str]:
    if cfg.get("layer_types"):
        types = ["sliding" if t == "sliding_attention" else "full" for t in cfg["layer_types"]]
        if len(types) != n:
            raise ValueError(f"layer_types has {len(types)} entries for {n} layers")
        return types
    return ["sliding" if default(i) else "full" for i in range(n)]


def from_hf(cfg: dict) -> ModelConfig:
    """Normalise a Hugging Face config dict; raises ValueError on an unsupported model_type."""
    if cfg.get("model_type") == "gemma3" and "text_config" in cfg:  # multimodal: keep the text part
        ids = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
        cfg = {**GEMMA3_TEXT_DEFAULTS, **ids, **cfg["text_config"], "model_type": "gemma3_text",
               "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
    mt = cfg.get("model_type")
    if mt not in FAMILIES:
        raise ValueError(f"unsupported model_type {mt!r}; supported: {', '.join(sorted(FAMILIES))}")
    if mt == "gptj":
        return _gptj(cfg)
    n = cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    theta, scaling = _rope(cfg)
    c = ModelConfig(
        model_type=mt, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_layers=n, num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        norm_eps=cfg.get("rms_norm_eps", 1e-6), layer_types=["full"] * n,
        rope_theta=theta, rope_scaling=scaling,
        activation=_activation(cfg.get("hidden_act", "silu")) if not mt.startswith("gemma") else "gelu_tanh",
        tie_embeddings=cfg.get("tie_word_embeddings", mt.startswith("gemma")),
        bos_token_id=cfg.get("bos_token_id"), eos_token_ids=_ids(cfg.get("eos_token_id")),
        pad_token_id=cfg.get("pad_token_id"), raw=cfg)
    window = cfg.get("sliding_window", DEFAULT_WINDOW)
    if mt == "llama":
        c.qkv_bias = c.o_bias = bool(cfg.get("attention_bias", False))
        c.mlp_bias = bool(cfg.get("mlp_bias", False))
    elif mt == "mistral":
        c.sliding_window = window
        c.layer_types = _layer_types(cfg, n, lambda i: window is not None)
    elif mt in ("qwen2", "qwen3"):
        c.qkv_bias = mt == "qwen2" or bool(cfg.get("attention_bias", False))
        c.o_bias = mt == "qwen3" and bool(cfg.get("attention_bias", False))
        c.qk_norm = mt == "qwen3"
        if mt == "qwen3":
            c.head_dim = cfg.get("head_dim") or 128
        on = bool(cfg.get("use_sliding_window", False)) and window is not None
        c.sliding_window = window if on else None
        first = cfg.get("max_window_layers", 28)
        c.layer_types = _layer_types(cfg, n, lambda i: on and i >= first)
        if not on:
            c.layer_types = ["full"] * n
    else:  # gemma family
        if cfg.get("hidden_activation"):
            c.activation = _activation(cfg["hidden_activation"])
        else:  # older configs: "gelu" (or nothing) meant the tanh approximation
            act = cfg.get("hidden_act") or "gelu"
            c.activation = "gelu_tanh" if act == "gelu" else _activation(act)
        c.head_dim = cfg.get("head_dim", 256)
        if mt in ("gemma2", "gemma3_text"):
            c.attn_scale = cfg.get("query_pre_attn_scalar", 256) ** -0.5
            softcaps = (50.0, 30.0) if mt == "gemma2" else (None, None)  # HF's defaults when absent
            c.attn_softcap = cfg.get("attn_logit_softcapping", softcaps[0])
            c.final_softcap = cfg.get("final_logit_softcapping", softcaps[1])
            c.sliding_window = window
        if mt == "gemma2":
            c.layer_types = _layer_types(cfg, n, lambda i: (i + 1) % 2 == 1)
        if mt == "gemma3_text":
            c.qk_norm = True
            pattern = cfg.get("sliding_window_pattern", 6)
            c.layer_types = _layer_types(cfg, n, lambda i: (i + 1) % pattern != 0)
            c.rope_theta, c.rope_scaling = _rope({"rope_theta": 1e6, **cfg})
            local = cfg.get("rope_parameters", {}).get("sliding_attention") if isinstance(
                cfg.get("rope_parameters"), dict) else None
            c.local_rope_theta = float(local["rope_theta"]) if local else float(
                cfg.get("rope_local_base_freq", 10000.0))
    return c


def _gptj(cfg: dict) -> ModelConfig:
    d = cfg["n_embd"]
    heads = cfg["n_head"]
    n = cfg["n_layer"]
    return ModelConfig(
        model_type="gptj", vocab_size=cfg["vocab_size"], hidden_size=d,
        intermediate_size=cfg.get("n_inner") or 4 * d, num_layers=n, num_heads=heads,
        num_kv_heads=heads, head_dim=d // heads, norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        activation=_activation(cfg.get("activation_function", "gelu_new")), layer_types=["full"] * n,
        rotary_dim=cfg.get("rotary_dim", 64) or d // heads, tie_embeddings=cfg.get("tie_word_embeddings", False),
        bos_token_id=cfg.get("bos_token_id"), eos_token_ids=_ids(cfg.get("eos_token_id")),
        pad_token_id=cfg.get("pad_token_id"), raw=cfg)


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json in the model folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    check_raw_sizes(raw, path)
    try:
        cfg = from_hf(raw)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    check_config(cfg, path)
    return cfg


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
