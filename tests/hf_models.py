"""Tiny random Hugging Face models for parity tests: every family with the parts that are easy to get
wrong switched on (GQA, head_dim != hidden/heads, windows shorter than the sequence, biases, softcaps,
rope scaling, random norm weights)."""

import pytest
import torch

from minipss.model.families import value_matrix_slots

WINDOW = 6  # sliding windows in the fixtures; test sequences are longer

CONFIGS = {
    "llama3_bias": ("LlamaConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, vocab_size=128, attention_bias=True, mlp_bias=True,
        rope_theta=500000.0, max_position_embeddings=64, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama_linear_tied": ("LlamaConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=128, tie_word_embeddings=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral": ("MistralConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, vocab_size=128, sliding_window=WINDOW)),
    "qwen2_sliding": ("Qwen2Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, use_sliding_window=True, sliding_window=WINDOW,
        max_window_layers=1, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, vocab_size=128, tie_word_embeddings=False)),
    "qwen3_bias": ("Qwen3Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, vocab_size=128, attention_bias=True, tie_word_embeddings=True)),
    "gptj": ("GPTJConfig", dict(
        n_embd=64, n_head=4, n_layer=2, rotary_dim=8, vocab_size=128, n_positions=64)),
    # initializer_range 0.2: pre-activations large enough that e.g. exact vs tanh GELU shows in the logits
    "gpt_neox": ("GPTNeoXConfig", dict(  # Pythia: parallel residual, RoPE on a quarter of each head
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, max_position_embeddings=64,
        initializer_range=0.2)),
    "gpt_neox_sequential_tied": ("GPTNeoXConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, vocab_size=128,
        rotary_pct=1.0, rotary_emb_base=500, use_parallel_residual=False, attention_bias=False,
        hidden_act="gelu_new", tie_word_embeddings=True, initializer_range=0.2)),
    "gpt_neox_linear_rope": ("GPTNeoXConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, vocab_size=128,
        rotary_pct=0.5, rotary_emb_base=20000, rope_scaling={"rope_type": "linear", "factor": 2.0},
        initializer_range=0.2)),
    "gpt2": ("GPT2Config", dict(  # tied head, gelu_new, Conv1D weights stored [in, out]
        n_embd=64, n_head=4, n_layer=2, vocab_size=128, n_positions=64, initializer_range=0.2,
        bos_token_id=1, eos_token_id=1)),
    "gpt2_untied_layer_scaled": ("GPT2Config", dict(
        n_embd=64, n_head=2, n_layer=3, n_inner=80, vocab_size=128, n_positions=40, activation_function="gelu",
        tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
        initializer_range=0.2, bos_token_id=1, eos_token_id=1)),
    "gpt2_unscaled": ("GPT2Config", dict(
        n_embd=32, n_head=4, n_layer=2, vocab_size=128, n_positions=32, scale_attn_weights=False,
        initializer_range=0.05, bos_token_id=1, eos_token_id=1)),
    "gemma": ("GemmaConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, vocab_size=128, hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh")),
    "gemma2": ("Gemma2Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, vocab_size=128, sliding_window=WINDOW,
        query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3": ("Gemma3TextConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, vocab_size=128, sliding_window=WINDOW,
        sliding_window_pattern=2, query_pre_attn_scalar=32,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    "falcon_7b_style": ("FalconConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128, multi_query=True,
        parallel_attn=True, bias=False, ffn_hidden_size=96)),
    "falcon_new_arch": ("FalconConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_kv_heads=2, vocab_size=128,
        new_decoder_architecture=True, bias=True, tie_word_embeddings=False)),
    "falcon_new_arch_one_norm": ("FalconConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2, vocab_size=128,
        new_decoder_architecture=True, num_ln_in_parallel_attn=1, ffn_hidden_size=80,
        rope_parameters={"rope_type": "default", "rope_theta": 500042.0})),
    "falcon_sequential": ("FalconConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128, multi_query=False,
        parallel_attn=False, bias=True, ffn_hidden_size=96)),
    "mpt_clip_scale": ("MptConfig", dict(
        d_model=64, n_heads=4, n_layers=2, vocab_size=128, max_seq_len=64, no_bias=True,
        attn_config={"clip_qkv": 0.15, "softmax_scale": 0.3, "alibi_bias_max": 8})),
    "mpt_six_heads": ("MptConfig", dict(
        d_model=48, n_heads=6, n_layers=2, vocab_size=128, max_seq_len=64, tie_word_embeddings=False,
        layer_norm_epsilon=1e-3)),
    "olmo_clip": ("OlmoConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, vocab_size=128, clip_qkv=0.1, attention_bias=True,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)),
    "olmo_tied": ("OlmoConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, vocab_size=128, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
        rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "olmo2_gqa": ("Olmo2Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, vocab_size=128, attention_bias=True, rms_norm_eps=1e-6,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, max_position_embeddings=64,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "olmo2_tied": ("Olmo2Config", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, vocab_size=128, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
        rope_scaling={"rope_type": "linear", "factor": 2.0})),
}


def one_row_per_family() -> list[str]:
    """The first parity-table row of each registered family."""
    from minipss.model.families import family_of

    transformers = pytest.importorskip("transformers")
    rows = {}
    for name, (cls_name, _) in CONFIGS.items():
        rows.setdefault(family_of(getattr(transformers, cls_name).model_type).model_types, name)
    return sorted(rows.values())


def make_hf_model(name: str, folder, seed: int = 0, **overrides):
    """Build the named tiny model in transformers with random weights (norms included), save it as
    safetensors in `folder`, and return it in eval mode (eager attention, fp32). `overrides` change
    config keys (e.g. vocab_size). Skips the calling test when transformers is not installed."""
    transformers = pytest.importorskip("transformers")

    cls_name, kwargs = CONFIGS[name]
    config = getattr(transformers, cls_name)(**{**kwargs, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln_" in pname:  # HF initialises these to 0 or 1: hide nothing
                p.copy_(torch.randn_like(p) * 0.5 + (0.0 if "gemma" in name else 1.0))
            if pname.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def padded_batch(vocab=128, lengths=(3 * WINDOW, 2 * WINDOW + 1, 5), seed=1):
    """Random token rows of different lengths, left-padded: (ids, attention mask, positions)."""
    from minipss.model.padding import left_pad

    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]
    return left_pad(seqs, pad_id=0)


class Recorder(torch.nn.Module):
    """Wraps HF's down_proj / fc_out and records its input (the coefficients m), without hooks."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach())
        return self.inner(x)


def record_coefficients(model):
    """Replace each block's value matrix (as our family file names it) with a Recorder."""
    recs = []
    for owner, name in value_matrix_slots(model, model.config.model_type):
        rec = Recorder(getattr(owner, name))
        setattr(owner, name, rec)
        recs.append(rec)
    return recs


# (seed, weight std) per row where the default (0, 0.2) decodes one token over and over or answers
# nothing; found once by trying a few; test_decoding asserts that the tokens and answers do vary
METHOD_WEIGHTS = {
    "falcon_7b_style": (1, 0.2), "falcon_new_arch": (4, 0.2), "falcon_new_arch_one_norm": (1, 0.2),
    "falcon_sequential": (2, 0.2), "gemma2": (1, 0.2), "gemma3": (2, 0.2), "gpt2_unscaled": (1, 0.2),
    "gpt_neox": (0, 0.4), "gpt_neox_sequential_tied": (0, 0.4), "gptj": (5, 0.2), "llama_linear_tied": (1, 0.2),
    "mistral": (2, 0.2), "mpt_clip_scale": (6, 0.4), "mpt_six_heads": (2, 0.2), "olmo2_gqa": (0, 0.4),
    "olmo2_tied": (6, 0.1), "olmo_clip": (2, 0.2), "olmo_tied": (2, 0.2), "qwen3": (2, 0.2), "qwen3_bias": (5, 0.2),
}


def make_method_model(name: str, folder, letter_boost: float = 2.0):
    """The parity row `name` as a model the method runs on: the byte tokenizer's vocabulary (259) saved
    beside it, room for the 3-shot prompt and 30 tokens (context 1024), matrices at the std of
    `METHOD_WEIGHTS` (HF initialises at 0.02, where the MLPs barely matter and greedy decoding repeats
    one token), the output rows of " " and the letters A-D times `letter_boost`. Returns the
    transformers model (eval, fp32)."""
    from tiny import byte_tokenizer

    seed, scale = METHOD_WEIGHTS.get(name, (0, 0.2))
    context = next((k for k in ("n_positions", "max_seq_len") if k in CONFIGS[name][1]), "max_position_embeddings")
    hf = make_hf_model(name, folder, seed=seed, vocab_size=259, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                       **{context: 1024})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, scale, generator=g)
        if name.startswith("gemma"):  # Gemma scales the embedding by sqrt(d); else it swamps the blocks
            hf.get_input_embeddings().weight.div_(hf.config.hidden_size ** 0.5)
        tok = byte_tokenizer()  # letters and spaces likelier, so that answers vary (not all None)
        for text in (" ", "A", "B", "C", "D"):
            hf.get_output_embeddings().weight[tok.encode(text).ids[0]] *= letter_boost
    hf.save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    return hf
