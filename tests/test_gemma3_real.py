"""minipss on the real Gemma 3 270M: equal to transformers on the same folder, and it knows things."""

import pytest
import torch

import minipss
from minipss.model.generate import generate
from minipss.model.padding import left_pad
from hf_models import record_coefficients

pytestmark = pytest.mark.real_model
pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

TEXTS = ["The Lord of the Rings was written by", "Question: Who painted the Mona Lisa?\nAnswer:",
         "Albert Einstein was born in the city of"]


@pytest.fixture(scope="module")
def real(gemma_dir):
    return minipss.load_model(gemma_dir), minipss.load_tokenizer(gemma_dir)


def test_logits_and_coefficients_equal_transformers_with_left_padding(real, gemma_dir):
    model, tok = real
    hf = transformers.Gemma3ForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32, attn_implementation="eager")
    ids, mask, pos = left_pad([tok.encode(t) for t in TEXTS], tok.pad_id)
    recs = record_coefficients(hf)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    out = model(ids, attention_mask=mask, position_ids=pos, return_coefficients=True)
    real_pos = mask.bool()
    assert (out.logits - ref)[real_pos].abs().max().item() <= 1e-3  # logits span ~±40 here
    for mine, rec in zip(out.coefficients, recs):
        assert torch.allclose(mine[real_pos], rec.seen[0][real_pos], atol=1e-4, rtol=1e-4)


def test_greedy_continuations_show_knowledge(real):
    model, tok = real
    outs = generate(model, [tok.encode(t) for t in TEXTS], 10, tok.eos_ids, tok.pad_id)
    text = [tok.decode(o) for o in outs]
    assert "Tolkien" in text[0] and "Leonardo" in text[1], text


def test_bf16_agrees_with_fp32_on_the_real_model(real, gemma_dir):
    model, tok = real
    low = minipss.load_model(gemma_dir, dtype=torch.bfloat16)
    ids = torch.tensor([tok.encode(TEXTS[0])])
    a, b = model(ids).logits[0, -1], low(ids).logits[0, -1].float()
    assert a.argmax() == b.argmax()
    assert ((a - b).abs().max() / a.std()).item() < 0.1


def test_quickstart_runs_the_default_job_on_the_real_model(gemma_dir, tmp_path, monkeypatch, capsys):
    """`minipss quickstart` to its end (its smallest size: 6 concepts, one ratio): cloze PSS with the random
    control on the first concepts of the bundled benchmark, on the converted model under `weights/`, its
    figures drawn beside the result."""
    import json

    from minipss.cli import main

    monkeypatch.chdir(gemma_dir.parent.parent)  # quickstart converts into (here: finds) weights/ of the cwd
    out = tmp_path / "q" / "result.json"
    main(["quickstart", "--out", str(out), "--concepts", "6", "--ratios", "0.01", "--quiet"])  # --dtype auto, as a user
    result = json.loads(out.read_text())
    bench = minipss.benchmark_path("minispecwiki")
    first = [json.loads(line)["concept"] for line in bench.read_text().splitlines()[:6]]
    assert [c["concept"] for c in result["concepts"]] == first
    assert result["settings"]["mode"] == "cloze" and result["settings"]["control"] is True
    assert result["settings"]["ratios"] == [0.01] and result["settings"]["concepts"] == 6
    assert all(set(c["control_by_ratio"]) == {"0.01"} for c in result["concepts"])
    for name in ("fig2_accuracy_vs_pss.png", "fig3_pss_by_ratio.png", "fig5_pss_by_tier.png"):
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "the full version" in capsys.readouterr().out
