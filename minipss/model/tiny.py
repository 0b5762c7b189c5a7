"""A tiny random model made on the spot, in the Hugging Face layout with a byte-level tokenizer: the method
runs on it end to end where no real model has been converted. Its weights are random, so it knows nothing:
its answers are chance, and so is any PSS measured on it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from .families import build_model, from_hf
from .load import checkpoint_state

SPECIALS = ["<pad>", "<eos>", "<bos>"]


def byte_tokenizer() -> Tokenizer:
    """One token per byte, after the three special tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def tiny_config(model_type: str = "llama", layers: int = 4, d_ff: int = 32, **extra) -> dict:
    """A config.json of hidden size 32 and the byte tokenizer's vocabulary."""
    cfg = {"model_type": model_type, "vocab_size": 259, "hidden_size": 32, "intermediate_size": d_ff,
           "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 8, "max_position_embeddings": 1024, "pad_token_id": 0, "eos_token_id": 1,
           "bos_token_id": 2, "tie_word_embeddings": False}
    cfg.update(extra)
    return cfg


def make_tiny_model(folder, seed: int = 0, **config) -> Path:
    """Write config.json (`tiny_config(**config)`), model.safetensors (seeded random weights: norms
    N(1, 0.2), the rest N(0, 0.3)) and tokenizer.json into `folder`; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = tiny_config(**config)
    torch.manual_seed(seed)
    model = build_model(from_hf(raw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, 0.3)
    (folder / "config.json").write_text(json.dumps(raw))
    save_file(checkpoint_state(model), folder / "model.safetensors")
    byte_tokenizer().save(str(folder / "tokenizer.json"))
    return folder
