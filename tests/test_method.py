"""The method's steps on tiny models: question sets, locating, masking, scoring modes, PSS forms."""

import pytest
import torch

import minipss
from minipss.method.benchmark import load_benchmark, unrelated_sets
from minipss.model.generate import generate
from minipss.method.controls import random_ranking
from minipss.method.pss import concept_cell, locate, mask_for, model_pss, question_coefficients, ranking, top_k
from minipss.method.benchmark import questions_of
from minipss.method.prompts import letter_in, mcq_prompt
from minipss.method.pss import cloze_tokens, mcq_answers
from tiny import make_bench, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    folder = make_tiny_model(d / "m", model_type="gemma3_text", sliding_window=8, sliding_window_pattern=2)
    bench = make_bench(d / "bench.jsonl", n_concepts=8, n_mcq=3)
    return minipss.load_model(folder), minipss.load_tokenizer(folder), load_benchmark(bench)


def test_unrelated_sets_are_five_other_concepts_seeded(tiny):
    concepts = tiny[2]
    sets = unrelated_sets(concepts, 5, seed=0)
    for i, others in enumerate(sets):
        assert len(set(others)) == 5 and i not in others
    assert sets == unrelated_sets(concepts, 5, seed=0)
    assert sets != unrelated_sets(concepts, 5, seed=1)
    qs = questions_of(concepts, 0, sets[0])
    assert qs[:3] == concepts[0].mcq
    assert qs[3:] == [q for j in sets[0] for q in concepts[j].mcq]


def test_same_category_unrelated_sets_stay_in_the_concept_kind(tmp_path):
    """`--unrelated same-category`: every unrelated concept shares the concept's category, seeded; the
    default draw is unchanged by the option existing (it still mixes categories); too few of a kind is an
    error naming the concept; a PSS run writes the drawn names."""
    from minipss.run.pipeline import run_pss
    from minipss.run.settings import Settings

    lines = make_bench(tmp_path / "b.jsonl", n_concepts=14, n_mcq=2).read_text().splitlines()
    kinds = ["person" if i % 2 else "company" for i in range(14)]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(l.replace('"category": "Test"', f'"category": "{k}"') + "\n" for l, k in zip(lines, kinds)))
    concepts = load_benchmark(mixed)
    same = unrelated_sets(concepts, 5, seed=3, draw="same-category")
    assert same == unrelated_sets(concepts, 5, seed=3, draw="same-category")
    for i, others in enumerate(same):
        assert len(set(others)) == 5 and i not in others
        assert {concepts[j].category for j in others} == {concepts[i].category}
    anyway = unrelated_sets(concepts, 5, seed=3)
    assert anyway == unrelated_sets(concepts, 5, seed=3, draw="any")
    assert any(len({concepts[j].category for j in others}) == 2 for others in anyway)
    with pytest.raises(ValueError, match=r"concept 'Concept 0': 4 other concepts of category 'company'"):
        unrelated_sets(concepts[:10], 5, draw="same-category")
    with pytest.raises(ValueError, match="unrelated draw 'kind'"):
        unrelated_sets(concepts, 5, draw="kind")
    model = make_tiny_model(tmp_path / "m")
    result = run_pss(model, mixed, tmp_path / "r.json", Settings(mode="cloze", ratios=[0.5], skip_layers=1,
                                                                 unrelated="same-category"), quiet=True)
    category = {c.name: c.category for c in concepts}
    for row in result["concepts"]:
        assert {category[n] for n in row["unrelated"]} == {row["category"]}
    assert result["settings"]["unrelated"] == "same-category"


def test_locate_is_absolute_difference_and_top_k_breaks_ties_by_index():
    m, m_star = torch.tensor([[1.0, 5.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 4.0, 0.0]])
    s = locate(m, m_star)
    assert s.tolist() == [[1.0, 5.0, 2.0, 2.0]]
    assert ranking(s)[0].tolist() == [1, 2, 3, 0]  # 2.0 at index 2 before index 3


def test_mask_zeroes_top_k_only_in_layers_from_skip():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 100, generator=g)
    mask = mask_for(ranking(scores), 0.1, skip=2)
    assert mask[:2].eq(1).all()
    for layer in range(2, 6):
        zeroed = set(torch.nonzero(mask[layer] == 0).flatten().tolist())
        assert zeroed == set(scores[layer].topk(top_k(100, 0.1)).indices.tolist())
    assert mask_for(ranking(scores), 0.0, skip=2).eq(1).all()
    with pytest.raises(ValueError, match="leaves nothing to mask"):
        mask_for(ranking(scores), 0.1, skip=6)


def test_random_control_has_same_count_per_layer_and_nests_across_ratios():
    order = random_ranking((4, 50), seed=3)
    small, large = mask_for(order, 0.1, 1), mask_for(order, 0.3, 1)
    assert (small[1:] == 0).sum(1).tolist() == [5, 5, 5]
    assert ((small == 0) <= (large == 0)).all()
    assert torch.equal(order, random_ranking((4, 50), seed=3))


def test_pss_at_ratio_zero_is_zero_and_zero_denominators_give_null():
    assert model_pss([0.9, 0.5], [0.2, 0.4], 0.6, 0.0) == 0.0
    assert model_pss([0.5], [0.3], 0.5, 0.1) == pytest.approx(0.4)
    assert model_pss([0.5], [0.3], 0.0, 0.1) is None
    cell = concept_cell(before_c=0.6, before_g=0.0, after_c=0.2, after_g=0.0, acc_before=0.5, ratio=0.1)
    assert cell["pss"] is None and cell["pss_acc_before"] == pytest.approx(0.4)
    assert cell["excess_drop"] == pytest.approx(0.4)
    same = concept_cell(0.6, 0.4, 0.6, 0.4, 0.5, 0.0)
    assert same["pss"] == 0.0 and same["excess_drop"] == 0.0


def test_coefficients_pool_mean_abs_over_content_tokens(tiny):
    model, tok, _ = tiny
    text = "Question: x? Answer: y"
    pooled = question_coefficients(model, tok, [text, text + " and more"])
    full = model(torch.tensor([tok.encode(text)]), return_coefficients=True).coefficients
    expect = torch.stack([m[0, 1:].abs().mean(0) for m in full])  # BOS left out
    assert torch.allclose(pooled[0], expect, atol=1e-6)
    swapped = question_coefficients(model, tok, [text + " and more", text, text + "!"], batch_size=2)
    assert torch.allclose(swapped[1], expect, atol=1e-6)  # batched by length, returned in input order
    assert torch.allclose(swapped[0], pooled[1], atol=1e-6)
    last = question_coefficients(model, tok, [text], token_rule="last")
    assert torch.allclose(last[0], torch.stack([m[0, -1].abs() for m in full]), atol=1e-6)


def test_generate_mode_equals_full_30_token_decode_and_regex(tiny):
    model, tok, concepts = tiny
    qs = [q for c in concepts[:3] for q in c.mcq]
    mask = mask_for(ranking(torch.rand(4, 32, generator=torch.Generator().manual_seed(1))), 0.3, 1)
    for m in (None, mask):
        fast = mcq_answers(model, tok, qs, "generate", m, batch_size=4, early_stop=True)
        full = [letter_in(tok.decode(o)) for o in generate(
            model, [tok.encode(mcq_prompt(q)) for q in qs], 30, tok.eos_ids, tok.pad_id, mlp_mask=m)]
        assert fast == full


def test_cloze_equals_scoring_each_option_in_its_own_forward_pass(tiny):
    model, tok, concepts = tiny
    qs = [q for c in concepts[:2] for q in c.mcq]
    masks = torch.stack([mask_for(random_ranking((4, 32), s), 0.2, 1) for s in range(len(qs))])
    got = mcq_answers(model, tok, qs, "cloze", masks, batch_size=4)
    for q, m, answer in zip(qs, masks, got):
        ctx, opts = cloze_tokens(tok, q)
        sums = []
        for opt in opts:
            logp = model(torch.tensor([ctx + opt]), mlp_mask=m).logits[0].log_softmax(-1)
            sums.append(sum(logp[len(ctx) - 1 + t, tok_id].item() for t, tok_id in enumerate(opt)))
        assert answer == list(q.options)[max(range(4), key=sums.__getitem__)]


def test_logits_mode_reads_letter_tokens_at_the_first_position(tiny):
    model, tok, concepts = tiny
    q = concepts[0].mcq[0]
    logits = model(torch.tensor([tok.encode(mcq_prompt(q))])).logits[0, -1]
    best = max("ABCD", key=lambda L: max(logits[tok.encode(s, bos=False)[0]] for s in (L, " " + L)))
    assert mcq_answers(model, tok, [q], "logits") == [best]


def test_mean_ablation_replaces_masked_coefficients_by_the_mean(tiny):
    model, tok, _ = tiny
    c = model.config
    mean = torch.randn(c.num_layers, c.intermediate_size)
    scores = torch.rand(c.num_layers, c.intermediate_size, generator=torch.Generator().manual_seed(4))
    ablate = mask_for(ranking(scores), 0.25, skip=1, mean=mean)
    zero = mask_for(ranking(scores), 0.25, skip=1)
    assert ablate.shape == (c.num_layers, 2 * c.intermediate_size)
    ids = torch.tensor([tok.encode("Question: what? Answer: this")])
    got = model(ids, mlp_mask=ablate, return_coefficients=True).coefficients
    plain = model(ids, return_coefficients=True).coefficients
    for layer in range(c.num_layers):
        off = zero[layer] == 0
        assert torch.allclose(got[layer][0][:, off], mean[layer, off].expand(ids.shape[1], -1))
        if layer == 0:
            assert torch.equal(got[0], plain[0])
