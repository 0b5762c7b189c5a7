"""The shared-work engine gives the answers of scoring each mask alone (fp32, CPU)."""

import pytest
import torch

import minipss
from minipss.benchmark import load_benchmark
from minipss.engine import common_prefix, cloze_answers, letter_answers
from minipss.method import mask_for, random_ranking
from minipss.scoring import mcq_answers
from tiny import make_bench, make_tiny_model


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def tiny(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    folder = make_tiny_model(d / "m", model_type=request.param, layers=4, d_ff=32, sliding_window=16)
    bench = load_benchmark(make_bench(d / "b.jsonl", n_concepts=6, n_mcq=3))
    masks = torch.stack([mask_for(random_ranking((4, 32), s), r, 1) for s in range(3) for r in (0.0, 0.2, 0.6)])
    return minipss.load_model(folder), minipss.load_tokenizer(folder), [q for c in bench for q in c.mcq], masks


def test_common_prefix_leaves_every_sequence_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[7, 8], [7, 8]]) == 1
    assert common_prefix([[1], [2, 3]]) == 0


@pytest.mark.parametrize("skip", [0, 1])
@pytest.mark.parametrize("mode", ["logits", "cloze"])
def test_engine_equals_one_mask_at_a_time(tiny, mode, skip):
    model, tok, qs, _ = tiny
    masks = torch.stack([mask_for(random_ranking((4, 32), s), r, skip) for s in range(3) for r in (0.0, 0.2, 0.6)])
    fast = (letter_answers if mode == "logits" else cloze_answers)(model, tok, qs, masks, skip=skip, max_rows=40)
    for m, got in zip(masks, fast):
        assert got == mcq_answers(model, tok, qs, mode, m), mode


def test_engine_refuses_masks_below_skip(tiny):
    model, tok, qs, masks = tiny
    with pytest.raises(ValueError, match="leave them untouched"):
        letter_answers(model, tok, qs, torch.zeros_like(masks), skip=1)
