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
