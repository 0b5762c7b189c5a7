"""Cached decoding in every row of the parity table: batched greedy decoding of left-padded prompts equals
transformers' generate, and the many-mask engine's generate mode (per-row masks, rows leaving the batch,
sliding windows shorter than the prompt) equals the plain 30-token protocol run one mask at a time.

Each tiny model has weights large enough that its greedy tokens vary and its answers differ between
questions or masks (asserted), so that equal tokens and answers say something."""

import pytest
import torch

import minipss
from minipss.method.benchmark import load_benchmark
from minipss.method.controls import random_ranking
from minipss.method.many_masks import generate_answers
from minipss.method.prompts import mcq_prompt
from minipss.method.pss import GENERATE_TOKENS, mask_for, mcq_answers
from minipss.model.generate import generate
from minipss.model.padding import left_pad
from hf_models import CONFIGS, WINDOW, make_method_model
from tiny import make_bench

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

SKIP = 1  # masks leave block 0 alone, so the engine shares it


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family_pair(request, tmp_path_factory):
    """(row name, transformers model, minipss model, tokenizer, questions of different prompt lengths)."""
    name = request.param
    d = tmp_path_factory.mktemp(name)
    hf = make_method_model(name, d / "m")
    bench = load_benchmark(make_bench(d / "b.jsonl", n_concepts=12, n_mcq=1))
    questions = [bench[c].mcq[0] for c in (0, 3, 10, 7, 11)]
    return name, hf, minipss.load_model(d / "m"), minipss.load_tokenizer(d / "m"), questions


def varied(rows: list[list[int]], name: str) -> None:
    """Every row of greedy tokens holds at least three distinct tokens."""
    assert min(len(set(r)) for r in rows) >= 3, (name, "greedy tokens repeat: equality would say little")


def test_cached_greedy_decoding_equals_transformers_generate(family_pair):
    name, hf, ours, tok, questions = family_pair
    prompts = [tok.encode(mcq_prompt(q)) for q in questions]
    assert len({len(p) for p in prompts}) > 1 and min(map(len, prompts)) > 20 * WINDOW  # padded; past every window
    mine = generate(ours, prompts, GENERATE_TOKENS, pad_id=tok.pad_id)
    ids, mask, _ = left_pad(prompts, tok.pad_id)
    ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=GENERATE_TOKENS, do_sample=False,
                      pad_token_id=tok.pad_id, eos_token_id=None)
    varied(mine, name)
    assert mine == ref[:, ids.shape[1]:].tolist(), name


def masks_for(model) -> torch.Tensor:
    """Zero masks at three ratios (the first masks nothing)."""
    L, d_ff = model.config.num_layers, model.config.intermediate_size
    return torch.stack([mask_for(random_ranking((L, d_ff), s), r, SKIP) for s, r in enumerate((0.0, 0.3, 0.7))])


def mean_masks_for(model) -> torch.Tensor:
    """Mean-ablation masks (`[L, 2 * d_ff]`: multiplier, then value)."""
    L, d_ff = model.config.num_layers, model.config.intermediate_size
    fill = torch.randn(L, d_ff, generator=torch.Generator().manual_seed(1))
    return torch.stack([mask_for(random_ranking((L, d_ff), 9 + s), r, SKIP, fill) for s, r in enumerate((0.2, 0.6))])


def test_engine_generate_equals_the_plain_protocol_one_mask_at_a_time(family_pair):
    """Every mask's tokens and letters equal a left-padded batch decoded with that mask alone
    (`mcq_answers`), with and without early stopping, for zero and mean-ablation masks; batches of 7
    rows mix masks."""
    name, _, ours, tok, questions = family_pair
    prompts = [tok.encode(mcq_prompt(q)) for q in questions]
    for masks in (masks_for(ours), mean_masks_for(ours)):
        fast, tokens = generate_answers(ours, tok, questions, masks, SKIP, max_rows=7, early_stop=False,
                                        return_tokens=True)
        if masks.shape[-1] == ours.config.intermediate_size:
            varied([t for row in tokens for t in row], name)
            assert len({a for row in fast for a in row}) >= 2, (name, "one answer everywhere: equality would say little")
        early = generate_answers(ours, tok, questions, masks, SKIP, max_rows=7)
        for m, got, toks, got_early in zip(masks, fast, tokens, early):
            assert toks == generate(ours, prompts, GENERATE_TOKENS, tok.eos_ids, tok.pad_id, mlp_mask=m), name
            assert got == mcq_answers(ours, tok, questions, "generate", m, early_stop=False), name
            assert got_early == got == mcq_answers(ours, tok, questions, "generate", m), name


def test_engine_rows_leaving_at_eos_equal_the_plain_protocol(family_pair):
    """With a token the model often emits as EOS, rows leave the batch at different steps; every mask's
    tokens and letters still equal the plain protocol's."""
    name, _, ours, tok, questions = family_pair
    masks = masks_for(ours)
    _, free = generate_answers(ours, tok, questions, masks, SKIP, early_stop=False, return_tokens=True)
    rows = [t for row in free for t in row]
    stops = lambda e: {r.index(e) if e in r else len(r) for r in rows}  # noqa: E731
    eos = max(sorted({t for r in rows for t in r}), key=lambda e: len(stops(e)))
    assert len(stops(eos)) >= 3, name
    saved, tok.eos_ids = tok.eos_ids, [eos]
    try:
        fast, stopped = generate_answers(ours, tok, questions, masks, SKIP, max_rows=7, early_stop=False,
                                         return_tokens=True)
        assert min(len(t) for row in stopped for t in row) < GENERATE_TOKENS
        prompts = [tok.encode(mcq_prompt(q)) for q in questions]
        for m, got, toks in zip(masks, fast, stopped):
            assert toks == generate(ours, prompts, GENERATE_TOKENS, [eos], tok.pad_id, mlp_mask=m), name
            assert got == mcq_answers(ours, tok, questions, "generate", m, early_stop=False), name
    finally:
        tok.eos_ids = saved
