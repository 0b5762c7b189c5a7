"""Tiny random models written to disk in Hugging Face layout, with a byte-level tokenizer: for testing
the method without transformers or real weights."""

import json

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from minipss.model.load import build_model, checkpoint_state
from minipss.model.families import from_hf

SPECIALS = ["<pad>", "<eos>", "<bos>"]


def byte_tokenizer() -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def tiny_config(model_type="llama", layers=4, d_ff=32, **extra):
    cfg = {"model_type": model_type, "vocab_size": 259, "hidden_size": 32, "intermediate_size": d_ff,
           "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 8, "max_position_embeddings": 1024, "pad_token_id": 0, "eos_token_id": 1,
           "bos_token_id": 2, "tie_word_embeddings": False}
    cfg.update(extra)
    return cfg


# GPT-J's config keys for the same small shape (it names its sizes differently)
GPTJ_SHAPE = dict(n_embd=32, n_head=4, n_layer=3, rotary_dim=4, n_positions=1024, vocab_size=259)


def make_tiny_model(folder, seed=0, **cfg_kwargs):
    """Write config.json, model.safetensors and tokenizer.json for a random model; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = tiny_config(**cfg_kwargs)
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


def make_bench(path, n_concepts=8, n_mcq=4, tiers=("high", "medium", "low"), categories=("Test",)):
    """A synthetic benchmark: real format, nonsense content (concept c in tier and category c modulo their
    counts)."""
    lines = []
    for c in range(n_concepts):
        mcq = []
        for q in range(n_mcq):
            opts = {L: f"{L.lower()}{c}{q} thing" for L in "ABCD"}
            mcq.append({"question": f"What is fact {q} of concept {c}?", "options": opts, "answer": "ABCD"[(c + q) % 4]})
        lines.append(json.dumps({"concept": f"Concept {c}", "tier": tiers[c % len(tiers)],
                                 "category": categories[c % len(categories)],
                                 "mcq": mcq, "open": [{"question": f"Name concept {c}?", "answer": f"c{c}"}]}))
    path.write_text("\n".join(lines) + "\n")
    return path
