"""The shared-work engine gives the answers of scoring each mask alone (fp32, CPU)."""

import pytest
import torch

import minipss
from minipss.method.benchmark import load_benchmark
from minipss.method.many_masks import common_prefix, cloze_answers, generate_answers, letter_answers
from minipss.model.generate import generate
from minipss.method.locate import mask_for, random_ranking
from minipss.method.prompts import letter_in, mcq_prompt
from minipss.method.scoring import GENERATE_TOKENS, mcq_answers
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


# ---------------------------------------------------------------- generate mode through the engine

GPTJ = dict(n_embd=32, n_head=4, n_layer=3, rotary_dim=4, n_positions=1024, vocab_size=259,
            pad_token_id=0, eos_token_id=1, bos_token_id=2)


SKIP = {"llama": 0, "mistral": 2, "gemma2": 1, "gemma3_text": 2, "gptj": 1}


@pytest.fixture(scope="module", params=list(SKIP))
def gen_tiny(request, tmp_path_factory):
    """A tiny model of each family; sliding windows (16) far shorter than the 3-shot prompts, so a window
    that counted padding would change the tokens. Questions of two lengths, so rows are padded."""
    d = tmp_path_factory.mktemp("gen_" + request.param)
    extra = GPTJ if request.param == "gptj" else dict(sliding_window=16)
    folder = make_tiny_model(d / "m", model_type=request.param, layers=3, d_ff=32, **extra)
    bench = load_benchmark(make_bench(d / "b.jsonl", n_concepts=12, n_mcq=1))
    qs = [bench[c].mcq[0] for c in (0, 3, 10, 7, 11)]
    return minipss.load_model(folder), minipss.load_tokenizer(folder), qs, SKIP[request.param]


def _gen_masks(L, d_ff, skip):
    """Zero masks and mean-ablation masks (`[L, 2 * d_ff]`: multiplier, then value)."""
    zero = [mask_for(random_ranking((L, d_ff), s), r, skip) for s, r in enumerate((0.0, 0.3, 0.7))]
    fill = torch.randn(L, d_ff, generator=torch.Generator().manual_seed(1))
    mean = [mask_for(random_ranking((L, d_ff), 9 + s), r, skip, fill) for s, r in enumerate((0.2, 0.6))]
    return torch.stack(zero), torch.stack(mean)


def test_generate_through_the_engine_equals_the_plain_30_token_protocol(gen_tiny):
    """Every mask's 30 greedy tokens and answers equal a left-padded batch decoded with that mask alone."""
    model, tok, qs, skip = gen_tiny
    c = model.config
    prompts = [tok.encode(mcq_prompt(q)) for q in qs]
    assert len({len(p) for p in prompts}) > 1  # rows of different lengths: padding matters
    for masks in _gen_masks(c.num_layers, c.intermediate_size, skip):
        fast, tokens = generate_answers(model, tok, qs, masks, skip, max_rows=7, early_stop=False,
                                        return_tokens=True)
        for m, got, toks in zip(masks, fast, tokens):
            assert toks == generate(model, prompts, GENERATE_TOKENS, tok.eos_ids, tok.pad_id, mlp_mask=m)
            assert got == [letter_in(tok.decode(t)) for t in toks]
        assert got == mcq_answers(model, tok, qs, "generate", m, early_stop=False)
        assert generate_answers(model, tok, qs, masks, skip) == fast  # early stopping: same answers


def test_generate_rows_leave_at_eos_at_different_steps(gen_tiny):
    """With a frequent token as EOS, rows stop at different steps; each equals the plain decoding."""
    model, tok, qs, _ = gen_tiny
    c = model.config
    masks, _ = _gen_masks(c.num_layers, c.intermediate_size, 1)
    _, free = generate_answers(model, tok, qs, masks[:3], 1, early_stop=False, return_tokens=True)
    rows = [toks for row in free for toks in row]
    stops = lambda t: {toks.index(t) if t in toks else len(toks) for toks in rows}
    eos = next((t for t in sorted({t for toks in rows for t in toks}) if len(stops(t)) > 2), None)
    if eos is None:
        pytest.skip("this tiny model's rows repeat the same tokens: no token stops them at different steps")
    tok.eos_ids, saved = [eos], tok.eos_ids
    try:
        _, stopped = generate_answers(model, tok, qs, masks[:3], 1, max_rows=9, early_stop=False,
                                      return_tokens=True)
        prompts = [tok.encode(mcq_prompt(q)) for q in qs]
        lengths = {len(toks) for row in stopped for toks in row}
        assert len(lengths) > 1 and min(lengths) < GENERATE_TOKENS
        for m, row in zip(masks[:3], stopped):
            assert row == generate(model, prompts, GENERATE_TOKENS, tok.eos_ids, tok.pad_id, mlp_mask=m)
    finally:
        tok.eos_ids = saved


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
def test_each_mask_scores_its_own_questions(tiny, mode):
    """With `which`, mask m answers the questions which[m] (as a run of several concepts does), with the
    answers it gives them among all questions."""
    from minipss.method import many_masks

    model, tok, qs, masks = tiny
    masks = masks[:4]
    which = [list(range(m % 3, len(qs), 2)) for m in range(len(masks))]
    got = many_masks.answers(model, tok, qs, masks, 1, mode, which=which)
    full = many_masks.answers(model, tok, qs, masks, 1, mode)
    for w, g, f in zip(which, got, full):
        assert g == [f[q] for q in w]
