"""Convert a GGUF file (llama.cpp's format) into a Hugging Face layout folder.

One conversion for the GGUF architectures `llama` (SmolLM2), `qwen2` (Qwen2.5) and `gemma3`:

- every tensor is dequantized with `gguf.quants.dequantize` (already PyTorch's `[out, in]`) and renamed
  through the `gguf_names` of the family that declares the architecture (`Family.gguf_archs`);
- what llama.cpp's converter did to the weights is undone: for the `llama` architecture it permuted the
  rows of q_proj and k_proj (per head, the rotary pairs interleaved: `(2, half)` -> `(half, 2)`), for
  Gemma it stored every norm weight as `w + 1`;
- `config.json` comes from the `<arch>.*` metadata (plus what the file does not carry, e.g. Gemma 3's
  local RoPE base); the head is tied exactly when the file has no `output.weight`;
- `tokenizer.json` and `tokenizer_config.json` (whether BOS is added) come from the file's own
  vocabulary (see `gguf_tokenizer`).

`model.safetensors` is float32, so nothing more is lost, and is written one tensor at a time, so
converting a 1.5B model needs memory for its largest tensor, not for the model.
"""

import json
import struct
from pathlib import Path

import numpy as np

from .. import files, interrupts
from ..model.families import family_of_gguf
from .gguf_tokenizer import adds_bos, build_tokenizer_json, metadata

HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
ROWS_PERMUTED = {"llama"}  # architectures whose q/k rows llama.cpp permuted for its RoPE layout
NORMS_PLUS_ONE = {"gemma3"}  # architectures whose norm weights llama.cpp stored as w + 1

# Gemma 3 facts the file does not carry.
GEMMA3_ROPE_LOCAL_BASE_FREQ = 10_000.0
GEMMA3_SLIDING_WINDOW_PATTERN = 6  # every 6th layer attends globally


def _optional(reader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _eps(value: float) -> float:
    """Stored as a float32 (9.99999997e-07): keep the 7 digits it holds, which gives back 1e-06."""
    return float(f"{value:.7g}")


def read_config(reader, tied: bool = True) -> dict:
    """config.json (the hub's v4 dialect) from the file's metadata; `tied`: no `output.weight` in it."""
    arch = metadata(reader, "general.architecture")
    model_type = family_of_gguf(arch).gguf_archs[arch]
    key = lambda name: metadata(reader, f"{arch}.{name}")  # noqa: E731
    scaling = _optional(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"{reader.data.filename}: {arch}.rope.scaling.type {scaling!r} is not supported")
    hidden, heads = key("embedding_length"), key("attention.head_count")
    head_dim = _optional(reader, f"{arch}.attention.key_length") or hidden // heads
    rotary = _optional(reader, f"{arch}.rope.dimension_count")
    if rotary not in (None, head_dim):
        raise ValueError(f"{reader.data.filename}: rotary dimension {rotary} != head dim {head_dim} is not supported")
    n_layers = key("block_count")
    config = {
        "architectures": [HF_CLASSES[model_type]],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": _optional(reader, f"{arch}.attention.head_count_kv") or heads,
        "head_dim": head_dim,
        "rms_norm_eps": _eps(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_optional(reader, f"{arch}.rope.freq_base") or 10_000.0),
        "rope_scaling": None,
        "max_position_embeddings": key("context_length"),
        "vocab_size": len(metadata(reader, "tokenizer.ggml.tokens")),
        "bos_token_id": _optional(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _optional(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _optional(reader, "tokenizer.ggml.padding_token_id"),
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
    }
    if arch == "gemma3":
        config.update({
            "rope_local_base_freq": GEMMA3_ROPE_LOCAL_BASE_FREQ,
            "sliding_window": key("attention.sliding_window"),
            "sliding_window_pattern": GEMMA3_SLIDING_WINDOW_PATTERN,
            "layer_types": ["full_attention" if (i + 1) % GEMMA3_SLIDING_WINDOW_PATTERN == 0 else "sliding_attention"
                            for i in range(n_layers)],
            "query_pre_attn_scalar": head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
        })  # fmt: skip
    else:
        config.update({"hidden_act": "silu", "attention_bias": False, "mlp_bias": False})
        if arch == "qwen2":  # Qwen2's q/k/v biases are implied by its model_type
            config.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": n_layers})
    return config


def hf_name(gguf_name: str, names: dict) -> str:
    """`blk.3.ffn_down.weight` -> `model.layers.3.mlp.down_proj.weight` through `names`; KeyError if unknown."""
    stem, _, kind = gguf_name.rpartition(".")
    if stem in names and not stem.startswith("blk."):
        return f"{names[stem]}.{kind}"
    blk, layer, part = (stem.split(".", 2) + ["", ""])[:3]
    if blk != "blk" or not layer.isdigit() or part not in names:
        raise KeyError(gguf_name)
    return f"model.layers.{layer}.{names[part]}.{kind}"


def expected_shapes(config: dict, arch: str) -> dict[str, tuple]:
    """Every HF tensor the model needs and its shape."""
    d, f, hd = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    block = {
        "input_layernorm.weight": (d,), "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q), "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
    }  # fmt: skip
    if arch == "qwen2":
        block.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    if arch == "gemma3":
        block.update({"self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,),
                      "pre_feedforward_layernorm.weight": (d,), "post_feedforward_layernorm.weight": (d,)})
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], d), "model.norm.weight": (d,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (config["vocab_size"], d)
    for i in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{part}": shape for part, shape in block.items()})
    return shapes


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: per head, rows stored as (half, 2) pairs go back to (2, half)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def plan(reader) -> tuple[dict, list]:
    """The config and, in file order, (GGUF tensor, HF name, shape); asserts the names and shapes match."""
    arch = metadata(reader, "general.architecture")
    names = family_of_gguf(arch).gguf_names
    config = read_config(reader, tied=all(t.name != "output.weight" for t in reader.tensors))
    items = []
    for t in reader.tensors:
        try:
            items.append((t, hf_name(t.name, names), tuple(int(n) for n in reversed(t.shape))))
        except KeyError:
            raise ValueError(f"{reader.data.filename}: unexpected tensor {t.name!r}") from None
    want = expected_shapes(config, arch)
    got = {name: shape for _, name, shape in items}
    if got != want:
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        wrong = sorted(n for n in want.keys() & got.keys() if want[n] != got[n])
        raise ValueError(
            f"{reader.data.filename}: tensors missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {wrong[:5]}"
        )
    return config, items


def hf_tensor(t, name: str, config: dict, arch: str) -> np.ndarray:
    """One tensor dequantized to float32, with llama.cpp's changes undone."""
    from gguf.quants import dequantize

    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    if arch in NORMS_PLUS_ONE and name.endswith("norm.weight"):
        w = w - 1.0
    if arch in ROWS_PERMUTED and ".self_attn.q_proj." in name:
        w = unpermute_rows(w, config["num_attention_heads"])
    if arch in ROWS_PERMUTED and ".self_attn.k_proj." in name:
        w = unpermute_rows(w, config["num_key_value_heads"])
    return np.ascontiguousarray(w)


def write_safetensors(path: Path, items, convert) -> None:
    """A float32 safetensors file written tensor by tensor: the header from the known shapes, then the data."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for _, name, shape in items:
        size = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for item in items:
            w = convert(*item[:2])
            if w.shape != item[2]:
                raise ValueError(f"{item[0].name}: dequantized to {w.shape}, expected {item[2]}")
            f.write(w.astype("<f4", copy=False).tobytes())
            interrupts.pause_point()  # a test may stop the conversion here, part-way


def tokenizer_config(reader) -> dict:
    """What `minipss.load_tokenizer` and transformers read beside tokenizer.json: BOS or not, special tokens."""
    tokens = metadata(reader, "tokenizer.ggml.tokens")
    out = {"add_bos_token": adds_bos(reader), "add_eos_token": False}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown")):
        index = _optional(reader, f"tokenizer.ggml.{key}_token_id")
        if index is not None:
            out[name] = tokens[index]
    return out


def check_target(out_dir, inputs=(), option: str = "--out") -> Path:
    """Where a conversion goes: a new or empty folder (never a file, an input, or a folder holding files)."""
    out_dir = files.output_folder(out_dir, inputs, option)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise files.foreign(out_dir, option)
    return out_dir


def convert_gguf(gguf_path, out_dir) -> Path:
    """Convert a GGUF file (llama, qwen2 or gemma3 architecture) into an HF layout folder; returns it.
    `out_dir` must be new or empty; the folder is written beside it and renamed into place when whole."""
    import gguf

    gguf_path = files.input_file(gguf_path, "GGUF file")
    out_dir = check_target(out_dir, [gguf_path])
    reader = gguf.GGUFReader(gguf_path)
    arch = metadata(reader, "general.architecture")
    config, items = plan(reader)
    tokenizer_json = build_tokenizer_json(reader)

    def write(tmp: Path) -> None:
        write_safetensors(tmp / "model.safetensors", items, lambda t, name: hf_tensor(t, name, config, arch))
        (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(reader), indent=2) + "\n", encoding="utf-8")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            path.chmod(0o644)

    with interrupts.writing(out_dir):
        return files.new_folder(out_dir, write)
