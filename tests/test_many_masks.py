"""The shared-work engine gives the answers of scoring each mask alone (fp32, CPU); generate mode in every
family: test_decoding."""

import pytest
import torch

import minipss
from minipss.method.benchmark import load_benchmark
from minipss.method.many_masks import common_prefix, cloze_answers, letter_answers
from minipss.method.controls import random_ranking
from minipss.method.pss import mask_for, mcq_answers
from tiny import make_bench, make_tiny_model


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def model_questions_masks(request, tmp_path_factory):
    """(model, tokenizer, 18 questions, 9 masks skipping block 0)."""
    d = tmp_path_factory.mktemp(request.param)
    # seed 2: answers that differ between questions and masks in all three modes (asserted below)
    folder = make_tiny_model(d / "m", seed=2, model_type=request.param, layers=4, d_ff=32, sliding_window=16)
    bench = load_benchmark(make_bench(d / "b.jsonl", n_concepts=6, n_mcq=3))
    masks = torch.stack([mask_for(random_ranking((4, 32), s), r, 1) for s in range(3) for r in (0.0, 0.2, 0.6)])
    return minipss.load_model(folder), minipss.load_tokenizer(folder), [q for c in bench for q in c.mcq], masks


def test_common_prefix_leaves_every_sequence_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[7, 8], [7, 8]]) == 1
    assert common_prefix([[1], [2, 3]]) == 0


@pytest.mark.parametrize("skip", [0, 1])
@pytest.mark.parametrize("mode", ["logits", "cloze"])
def test_engine_equals_one_mask_at_a_time(model_questions_masks, mode, skip):
    model, tok, qs, _ = model_questions_masks
    masks = torch.stack([mask_for(random_ranking((4, 32), s), r, skip) for s in range(3) for r in (0.0, 0.2, 0.6)])
    fast = (letter_answers if mode == "logits" else cloze_answers)(model, tok, qs, masks, skip=skip, max_rows=40)
    assert len({a for row in fast for a in row}) > 1, "one answer everywhere: equality would say little"
    for m, got in zip(masks, fast):
        assert got == mcq_answers(model, tok, qs, mode, m), mode


def test_engine_refuses_masks_below_skip(model_questions_masks):
    model, tok, qs, masks = model_questions_masks
    with pytest.raises(ValueError, match="leave them untouched"):
        letter_answers(model, tok, qs, torch.zeros_like(masks), skip=1)


def test_left_align_moves_padding_first():
    from minipss.model.layers import KVCache
    from minipss.method.many_masks import left_align

    cache = KVCache(1)
    cache.k[0] = torch.arange(10.).view(2, 1, 5, 1)
    cache.v[0] = -cache.k[0]
    attn = left_align(cache, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), torch.tensor([3, 5]))
    assert attn.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert cache.k[0].flatten().tolist() == [3., 4., 0., 1., 2., 5., 6., 7., 8., 9.]
    assert torch.equal(cache.v[0], -cache.k[0])


@pytest.mark.parametrize("mode", ["logits", "cloze", "generate"])
def test_each_mask_scores_its_own_questions(model_questions_masks, mode):
    """With `which`, mask m answers the questions which[m] (as a run of several concepts does), with the
    answers it gives them among all questions."""
    from minipss.method import many_masks

    model, tok, qs, masks = model_questions_masks
    masks = masks[:4]
    which = [list(range(m % 3, len(qs), 2)) for m in range(len(masks))]
    got = many_masks.answers(model, tok, qs, masks, 1, mode, which=which)
    full = many_masks.answers(model, tok, qs, masks, 1, mode)
    assert len({a for row in full for a in row}) > 1, "one answer everywhere: equality would say little"
    for w, g, f in zip(which, got, full):
        assert g == [f[q] for q in w]
