"""Convert the Gemma 3 GGUF file into a Hugging Face layout folder.

Follows spec/gemma3-gguf.md: dequantize every tensor with `gguf.quants.dequantize` (the result is
already PyTorch's `[out, in]`), rename to Gemma3ForCausalLM keys, subtract the 1 that llama.cpp folds
into every norm weight, and write `model.safetensors` (float32, so nothing more is lost),
`config.json` (the hub's v4 dialect, `model_type: gemma3_text`) and `tokenizer.json`.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .gguf_tokenizer import build_tokenizer_json, metadata

# GGUF name -> HF name; `blk.N.<part>` becomes `model.layers.N.<BLOCK_NAMES[part]>`.
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
BLOCK_NAMES = {
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

# Gemma 3 facts the file does not carry (spec: "Not in the file, Gemma 3 defaults").
ROPE_LOCAL_BASE_FREQ = 10_000.0
SLIDING_WINDOW_PATTERN = 6  # every 6th layer attends globally
HIDDEN_ACTIVATION = "gelu_pytorch_tanh"


def read_config(reader) -> dict:
    """config.json for Gemma3ForCausalLM, from the `gemma3.*` metadata plus Gemma 3's defaults."""
    arch = metadata(reader, "general.architecture")
    if arch != "gemma3":
        raise ValueError(f"{reader.data.filename}: general.architecture is {arch!r}, expected 'gemma3'")
    n_layers = metadata(reader, "gemma3.block_count")
    head_dim = metadata(reader, "gemma3.attention.key_length")
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": metadata(reader, "gemma3.embedding_length"),
        "intermediate_size": metadata(reader, "gemma3.feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": metadata(reader, "gemma3.attention.head_count"),
        "num_key_value_heads": metadata(reader, "gemma3.attention.head_count_kv"),
        "head_dim": head_dim,
        # stored as a float32 (9.99999997e-07): keep the 7 digits it holds, which gives back 1e-06
        "rms_norm_eps": float(f'{metadata(reader, "gemma3.attention.layer_norm_rms_epsilon"):.7g}'),
        "rope_theta": metadata(reader, "gemma3.rope.freq_base"),
        "rope_local_base_freq": ROPE_LOCAL_BASE_FREQ,
        "rope_scaling": None,
        "sliding_window": metadata(reader, "gemma3.attention.sliding_window"),
        "sliding_window_pattern": SLIDING_WINDOW_PATTERN,
        "layer_types": [
            "full_attention" if (i + 1) % SLIDING_WINDOW_PATTERN == 0 else "sliding_attention" for i in range(n_layers)
        ],
        "query_pre_attn_scalar": head_dim,
        "hidden_activation": HIDDEN_ACTIVATION,
        "max_position_embeddings": metadata(reader, "gemma3.context_length"),
        "vocab_size": len(metadata(reader, "tokenizer.ggml.tokens")),
        "bos_token_id": metadata(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata(reader, "tokenizer.ggml.padding_token_id"),
        "tie_word_embeddings": True,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "torch_dtype": "float32",
    }


def hf_name(gguf_name: str) -> str:
    """`blk.3.ffn_down.weight` -> `model.layers.3.mlp.down_proj.weight`; KeyError if unknown."""
    stem, _, kind = gguf_name.rpartition(".")
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{kind}"
    blk, layer, part = (stem.split(".", 2) + ["", ""])[:3]
    if blk != "blk" or not layer.isdigit() or part not in BLOCK_NAMES:
        raise KeyError(gguf_name)
    return f"model.layers.{layer}.{BLOCK_NAMES[part]}.{kind}"


def expected_shapes(config: dict) -> dict[str, tuple]:
    """Every HF tensor the model needs and its shape (the head is tied: no lm_head)."""
    d, f, hd = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    block = {
        "input_layernorm": (d,), "self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d),
        "self_attn.v_proj": (kv, d), "self_attn.q_norm": (hd,), "self_attn.k_norm": (hd,),
        "self_attn.o_proj": (d, q), "post_attention_layernorm": (d,), "pre_feedforward_layernorm": (d,),
        "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d), "mlp.down_proj": (d, f), "post_feedforward_layernorm": (d,),
    }  # fmt: skip
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], d), "model.norm.weight": (d,)}
    for i in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{part}.weight": shape for part, shape in block.items()})
    return shapes


def read_tensors(reader, config: dict) -> dict[str, torch.Tensor]:
    """Dequantized float32 tensors under HF names, norms minus 1; asserts names and shapes match."""
    from gguf.quants import dequantize

    tensors = {}
    for t in reader.tensors:
        try:
            name = hf_name(t.name)
        except KeyError:
            raise ValueError(f"{reader.data.filename}: unexpected tensor {t.name!r}") from None
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if name.endswith("norm.weight"):
            w -= 1.0  # llama.cpp stores Gemma's norm weights as w + 1
        tensors[name] = torch.from_numpy(w)

    want = expected_shapes(config)
    got = {name: tuple(w.shape) for name, w in tensors.items()}
    if got != want:
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        wrong = sorted(n for n in want.keys() & got.keys() if want[n] != got[n])
        raise ValueError(
            f"{reader.data.filename}: tensors missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {wrong[:5]}"
        )
    return tensors


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished folder into place: one rename when out_dir is new, else file by file."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        os.replace(tmp / name, out_dir / name)
    shutil.rmtree(tmp)


def convert_gemma3_gguf(gguf_path, out_dir) -> Path:
    """Convert a Gemma 3 GGUF file into an HF layout folder; returns the folder."""
    import gguf

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    reader = gguf.GGUFReader(gguf_path)
    config = read_config(reader)
    tensors = read_tensors(reader, config)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "tokenizer.json").write_text(build_tokenizer_json(reader), encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            path.chmod(0o644)
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
