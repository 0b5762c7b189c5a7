"""GGUF conversion in every architecture the converter accepts, on small GGUF files written here (see
`gguf_files`): `python -m minipss.weights` reads them from installed packages (one file, or chunks) as it
reads the real models, and the result equals the source weights, transformers' own GGUF loading and
its GGUF tokenizer."""

import json

import pytest
import torch
from safetensors.torch import load_file

import minipss
from minipss.model.padding import left_pad
from minipss.weights.real_models import main as weights_main
from gguf_files import CORPUS, hf_model, install_fake_package, vocab_size, write_gguf
from test_weights_real import TEXTS

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

# (GGUF architecture, tokenizer kind, packages it is split into)
CASES = [("llama", "gpt2", 1), ("qwen2", "gpt2", 2), ("gemma3", "llama", 3)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{t}" for a, t, _ in CASES])
def converted(request, tmp_path_factory):
    """(arch, source transformers model, converted folder, GGUF path), converted by the weights command."""
    arch, tokenizer, parts = request.param
    d = tmp_path_factory.mktemp(arch)
    source = hf_model(arch, vocab_size(tokenizer))
    path = write_gguf(d / "tiny.gguf", arch, source, tokenizer)
    with pytest.MonkeyPatch.context() as mp:
        (d / "site").mkdir()
        install_fake_package(d / "site", path, f"tiny-{arch}", arch, parts, mp)
        assert weights_main([f"tiny-{arch}", "--out", str(d / "converted")]) == 0
    return arch, source, d / "converted", path


@pytest.fixture(scope="module")
def gguf_reference(converted):
    """transformers' model and tokenizer loaded from the same GGUF file (fp32)."""
    _, _, _, path = converted
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                              attn_implementation="eager")
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_config_matches_the_source(converted):
    arch, source, folder, _ = converted
    c, got = source.config, json.loads((folder / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings", "max_position_embeddings"):
        assert got[key] == getattr(c, key), key
    assert got["head_dim"] == (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    assert got["rms_norm_eps"] == c.rms_norm_eps
    assert got["rope_theta"] == c.rope_parameters.get("full_attention", c.rope_parameters)["rope_theta"]


def test_weights_equal_the_source_and_transformers_gguf_loading(converted, gguf_reference):
    """Every tensor as the source model had it: the LLaMA q/k rows un-permuted, Gemma's norms minus one
    (exact up to the float32 rounding of w + 1)."""
    arch, source, folder, _ = converted
    ours = load_file(folder / "model.safetensors")
    want = {k: v for k, v in source.state_dict().items() if not (k == "lm_head.weight" and source.config.tie_word_embeddings)}
    assert ours.keys() == want.keys()
    theirs = gguf_reference[0].state_dict()
    for key, w in want.items():
        tol = 1e-6 if arch == "gemma3" and key.endswith("norm.weight") else 0.0
        assert (ours[key] - w).abs().max().item() <= tol, key
        assert (ours[key] - theirs[key]).abs().max().item() <= tol, key
    if arch == "llama":  # the file's rows really were permuted: reading them as they are would be wrong
        from gguf import GGUFReader

        stored = next(t for t in GGUFReader(converted[3]).tensors if t.name == "blk.0.attn_q.weight")
        assert not torch.equal(torch.from_numpy(stored.data.copy()).reshape(want["model.layers.0.self_attn.q_proj.weight"].shape),
                               want["model.layers.0.self_attn.q_proj.weight"])


def test_tokenizer_equals_transformers_gguf_tokenizer(converted, gguf_reference):
    _, _, folder, _ = converted
    ours, theirs = minipss.load_tokenizer(folder), gguf_reference[1]
    for text in CORPUS + TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), repr(text)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), repr(text)
    assert len(set(ours.encode(" ".join(CORPUS)))) > 40  # merges at work, not one token per byte


def test_logits_equal_the_source_and_transformers(converted, gguf_reference):
    """minipss on the converted folder, and transformers on that folder, give the source model's logits
    (left-padded batch, explicit positions); transformers on the GGUF file too, except for Gemma 3, whose
    file lacks settings (query scaling, local RoPE base) that transformers then takes from its defaults."""
    arch, source, folder, _ = converted
    tok = minipss.load_tokenizer(folder)
    ids, mask, pos = left_pad([tok.encode(t) for t in CORPUS[:3]], pad_id=0)
    with torch.no_grad():
        want = source(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        hf_folder = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
        others = [hf_folder(input_ids=ids, attention_mask=mask, position_ids=pos).logits]
        if arch != "gemma3":
            others.append(gguf_reference[0](input_ids=ids, attention_mask=mask, position_ids=pos).logits)
    ours = minipss.load_model(folder)(ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    assert want[real].std() > 1.0  # logits spread wide enough that a wrong weight shows
    for got in [ours, *others]:
        assert (got[real] - want[real]).abs().max().item() <= 1e-4, arch


def test_a_second_run_keeps_the_folder(converted, tmp_path):
    arch, _, folder, path = converted
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with pytest.MonkeyPatch.context() as mp:
        (tmp_path / "site").mkdir()
        install_fake_package(tmp_path / "site", path, f"tiny-{arch}", arch, 1, mp)
        assert weights_main([f"tiny-{arch}", "--out", str(folder)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
