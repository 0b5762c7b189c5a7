"""What a test could have seen: mde80, the floor, the smallest p a correlation can reach, the graded outcome
and the pseudo-concept control."""

import json
import math

import pytest
import torch

import minipss
from minipss.method import many_masks
from minipss.method.benchmark import LETTERS, load_benchmark, unrelated_sets
from minipss.method.controls import pseudo_concepts, random_ranking
from minipss.method.pss import answer_of, mask_for, mcq_scores, p_correct
from minipss.run.claims import floored, located_vs_control, verdict, verdict_sentence
from minipss.run.pipeline import measure, run_pss
from minipss.run.report import significance, summary
from minipss.run.settings import Settings
from minipss.run.stats import holm, mde, paired_test, pearson, smallest_p, spearman
from minipss.run.workdir import Unsaved
from tiny import make_bench, make_tiny_model

Z = 1.959964 + 0.841621  # z_{0.975} + z_{0.80}


def test_mde80_is_the_normal_power_formula_on_a_fixed_table():
    d = [0.1, 0.0, 0.2, -0.1, 0.1]  # mean 0.06; squared deviations sum to 0.052
    sd = math.sqrt(0.052 / 4)
    assert mde(d) == pytest.approx(Z * sd / math.sqrt(5), rel=1e-6)
    assert mde(d) == pytest.approx(0.142853, abs=1e-6)
    assert mde([0.3]) is None
    assert paired_test([0.5, 0.4, 0.7, 0.1, 0.6], [0.4, 0.4, 0.5, 0.2, 0.5])["mde80"] == pytest.approx(mde(d))


def test_smallest_p_belongs_to_its_statistic_and_its_values():
    xs = [0.1, 0.2, 0.3, 0.4]
    assert smallest_p(xs, [1.0, 2.0, 3.0, 4.0], spearman) == 2 / 24
    # tied values: the top |r| is reached by more orderings, so the smallest p is larger
    assert smallest_p(xs, [1.0, 1.0, 3.0, 4.0], spearman) == 4 / 24
    assert smallest_p(xs, [1.0, 1.0, 3.0, 4.0], pearson) == 4 / 24
    assert smallest_p(xs, [2.0, 2.0, 2.0, 2.0], pearson) is None


def test_a_null_states_what_the_test_would_have_detected():
    test = {"difference": 0.01, "ci95": [-0.03, 0.05], "p_value": 0.6, "mde80": 0.0612, "n": 90}
    said = located_vs_control(0.001, "matched", test, "excess_drop", general_after=0.38)
    assert "was detected" in said and "this test detects 0.061 or more with 80% power" in said
    assert "unlikely given these data" not in said


def test_a_null_at_a_floored_ratio_does_not_claim_absence():
    test = {"difference": 0.004, "ci95": [-0.03, 0.04], "p_value": 0.8, "mde80": 0.05, "n": 90}
    assert floored(0.29) and floored(0.2) and not floored(0.31) and not floored(None)
    said = located_vs_control(0.1, "pseudo", test, "excess_drop", general_after=0.241)
    assert "floored" in said and "cannot show" in said and "says nothing about whether" in said
    assert "was detected" not in said and "80% power" not in said
    # a measure that is not concept-specific is read as usual at a floor
    general = located_vs_control(0.1, "pseudo", test, "general_after", general_after=0.241)
    assert "no difference in accuracy on unrelated questions" in general and "80% power" in general
    # and a detected effect is reported whatever the floor
    found = located_vs_control(0.1, "matched", {**test, "p_value": 0.01}, "excess_drop", general_after=0.241)
    assert "hurt their own concept more than magnitude-matched" in found


# ---- the graded outcome and the pseudo-concept control, through the pipeline on a tiny model -----------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("sensitivity")
    return make_tiny_model(d / "m"), make_bench(d / "b.jsonl", n_concepts=12, n_mcq=4)


@pytest.mark.parametrize("mode", ["cloze", "logits"])
def test_option_probabilities_sum_to_one_and_their_argmax_is_the_answer(tiny, mode):
    model, tok = minipss.load_model(tiny[0]), minipss.load_tokenizer(tiny[0])
    questions = [q for c in load_benchmark(tiny[1])[:4] for q in c.mcq]
    masks = torch.stack([mask_for(random_ranking((model.config.num_layers, model.config.intermediate_size), s),
                                  0.3, 1) for s in range(3)])
    engine = many_masks.answers(model, tok, questions, masks, 1, mode, scores=True)
    for m, mask in enumerate(masks):
        plain = mcq_scores(model, tok, questions, mode, mask)
        for q, s_plain, s_engine in zip(questions, plain, engine[m]):
            probs = [p_correct(s_plain, letter) for letter in LETTERS]
            assert sum(probs) == pytest.approx(1.0, abs=1e-12)
            assert answer_of(s_plain) == LETTERS[max(range(4), key=probs.__getitem__)]
            assert s_engine == pytest.approx(s_plain, abs=1e-4)  # the engine: same scores, other summation order
            assert answer_of(s_engine) == answer_of(s_plain)


@pytest.mark.parametrize("engine", [True, False])
def test_saved_probabilities_are_those_of_the_counted_answers(tiny, tmp_path, engine):
    s = Settings(mode="cloze", ratios=[0.2], skip_layers=1, dtype="float32", engine=engine, pseudo_control=True)
    r = run_pss(*tiny, tmp_path / "r.json", s, quiet=True)
    cells = [json.loads(line) for line in (tmp_path / "r.json.work" / "cells.jsonl").read_text().splitlines()]
    assert cells and all(len(c["prob"]) == len(c["correct"]) for c in cells)
    # a right answer is the most probable option, so its p(correct) is at least 1/4
    assert all(p >= 0.25 - 1e-12 for c in cells for p, ok in zip(c["prob"], c["correct"]) if ok)
    row = r["concepts"][0]
    baseline = next(c for c in cells if c["key"] == "baseline|0")
    assert row["prob_concept_before"] == pytest.approx(sum(baseline["prob"]) / len(baseline["prob"]))
    cell = row["by_ratio"]["0.2"]
    located = next(c for c in cells if c["key"] == "located|0|0.2")
    assert cell["prob_concept_after"] == pytest.approx(sum(located["prob"][:4]) / 4)
    assert cell["prob_excess_drop"] == pytest.approx((row["prob_concept_before"] - cell["prob_concept_after"])
                                                     - (row["prob_general_before"] - cell["prob_general_after"]))
    for key in ("pseudo_by_ratio",):
        assert set(row[key]["0.2"]) >= {"prob_concept_after", "prob_general_after", "prob_excess_drop"}
    assert r["significance"]["0.2"]["pseudo"]["prob_excess_drop"]["n"] == 12


def test_engine_and_plain_loop_save_the_same_graded_cells(tiny, tmp_path):
    runs = {}
    for engine in (True, False):
        s = Settings(mode="logits", ratios=[0.2], skip_layers=1, dtype="float32", engine=engine)
        run_pss(*tiny, tmp_path / f"{engine}.json", s, quiet=True)
        lines = (tmp_path / f"{engine}.json.work" / "cells.jsonl").read_text().splitlines()
        runs[engine] = {c["key"]: c for c in map(json.loads, lines)}
    assert runs[True].keys() == runs[False].keys()
    for key, cell in runs[True].items():
        assert cell["correct"] == runs[False][key]["correct"]
        assert cell["prob"] == pytest.approx(runs[False][key]["prob"], abs=1e-5)


def test_generate_mode_has_no_graded_outcome(tiny, tmp_path):
    s = Settings(mode="generate", ratios=[0.5], skip_layers=1, dtype="float32", concepts=6)
    r = run_pss(*tiny, tmp_path / "r.json", s, quiet=True)
    assert "prob_before" not in r and "prob_concept_before" not in r["concepts"][0]
    assert "prob_excess_drop" not in r["concepts"][0]["by_ratio"]["0.5"]
    assert "prob_concept_before" not in (tmp_path / "r.csv").read_text().splitlines()[0]


def test_a_pseudo_concept_draws_each_question_from_a_different_outside_concept(tmp_path):
    concepts = load_benchmark(make_bench(tmp_path / "b.jsonl", n_concepts=20, n_mcq=6))
    others = unrelated_sets(concepts, 5, 0)
    pseudo = pseudo_concepts(concepts, others, seed=3)
    for i, questions in enumerate(pseudo):
        sources = [j for j, _ in questions]
        assert len(questions) == len(concepts[i].mcq) and len(set(sources)) == len(sources)
        assert not set(sources) & ({i} | set(others[i]))
        assert all(0 <= k < len(concepts[j].mcq) for j, k in questions)
    assert pseudo == pseudo_concepts(concepts, others, seed=3) != pseudo_concepts(concepts, others, seed=4)
    with pytest.raises(ValueError, match="needs at least 12 concepts"):
        pseudo_concepts(concepts[:11], unrelated_sets(concepts[:11], 5, 0), seed=0)


@pytest.mark.parametrize("split", [False, True])
def test_a_pseudo_concept_of_the_concepts_own_questions_gives_the_located_cells(tiny, split):
    model, tok = minipss.load_model(tiny[0]), minipss.load_tokenizer(tiny[0])
    concepts = load_benchmark(tiny[1])
    others = unrelated_sets(concepts, 5, 0)
    own = [[(i, k) for k in range(len(c.mcq))] for i, c in enumerate(concepts)]
    s = Settings(mode="cloze", ratios=[0.1, 0.3], skip_layers=1, dtype="float32", split_half=split)
    cells, probs, _, _ = measure(model, tok, concepts, others, s, Unsaved(), quiet=True, pseudo=own)
    for i in range(len(concepts)):
        for r in s.ratios:
            assert cells[f"pseudo|{i}|{r}"] == cells[f"located|{i}|{r}"]
            # the same masks; their rows sit elsewhere in the engine's batches (other padding, other order)
            assert probs[f"pseudo|{i}|{r}"] == pytest.approx(probs[f"located|{i}|{r}"], abs=1e-5)


def test_prob_significance_and_mde80_by_hand_on_a_fixed_table():
    located = [0.30, 0.10, 0.25, 0.05]
    control = [0.10, 0.10, 0.05, 0.10]
    rows = [{"by_ratio": {"0.1": {**BASE, "prob_excess_drop": a, "prob_general_after": 0.5}},
             "pseudo_by_ratio": {"0.1": {**BASE, "prob_excess_drop": b, "prob_general_after": 0.4 + a}}}
            for a, b in zip(located, control)]
    test = significance(rows, [0.1])["0.1"]["pseudo"]
    d = [0.20, 0.0, 0.20, -0.05]  # located minus control
    sd = math.sqrt(sum((x - 0.0875) ** 2 for x in d) / 3)
    assert test["prob_excess_drop"]["difference"] == pytest.approx(0.0875)
    assert test["prob_excess_drop"]["mde80"] == pytest.approx(Z * sd / 2, rel=1e-6)
    # exact: of the signs on (0.2, 0.2, -0.05), (+, +, ±) and (-, -, ±) reach |sum| >= 0.35; the 0 doubles each
    assert test["prob_excess_drop"]["p_value"] == pytest.approx(8 / 16)
    assert test["prob_general_after"]["difference"] == pytest.approx(0.5 - (0.4 + 0.175))
    assert set(significance([{k: v for k, v in r.items()} for r in rows], [0.1])["0.1"]) == {"pseudo"}


BASE = {"excess_drop": 0.0, "g_minus_c": 0.0, "concept_after": 0.5, "general_after": 0.5}


def test_floored_ratios_are_marked_in_the_result_and_its_summary(tiny, tmp_path):
    r = run_pss(*tiny, tmp_path / "r.json", Settings(mode="cloze", ratios=[0.5], skip_layers=1, control=True,
                                                       dtype="float32", concepts=6), quiet=True)
    general = r["general_after_by_ratio"]["0.5"]
    assert r["floored_by_ratio"]["0.5"] == (general < 0.30)
    text = summary(r)
    if r["floored_by_ratio"]["0.5"]:  # a random model sits at chance: the floor is named, absence never claimed
        assert "(floored)" in text and "cannot show" in text
        assert not any("no concept-specific difference" in line for line in text.splitlines())


# ---- the one decision per result: every control beaten at a ratio above the floor, Holm across ratios ----

def test_holm_by_hand():
    # sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> 0.09 (never below an earlier one); 0.5 x 1
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and holm([]) == []
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_verdict_needs_every_control_beaten_above_the_floor_with_holm_across_ratios():
    def t(d, p):
        return {"difference": d, "p_value": p, "mde80": 0.03, "ci95": [d - 0.01, d + 0.01], "n": 90}

    def by(*tests):  # random, matched, pseudo: (excess drop of accuracy, of p(correct))
        return {kind: {"excess_drop": a, "prob_excess_drop": b} for kind, (a, b) in zip(("random", "matched", "pseudo"), tests)}

    sig = {"0.0": by((t(0, 1), t(0, 1))),
           "0.001": by((t(0.03, 0.001), t(0.02, 0.004)), (t(0.02, 0.02), t(0.02, 0.020)), (t(0.01, 0.3), t(0.02, 0.010))),
           "0.003": by((t(0.03, 0.001), t(0.02, 0.001)), (t(0.02, 0.01), t(-0.01, 0.001)), (t(0.03, 0.01), t(0.02, 0.001))),
           "0.01": by((t(0.05, 0.001), t(0.05, 0.001)), (t(0.05, 0.001), t(0.05, 0.001)), (t(0.05, 0.001), t(0.05, 0.001)))}
    floors = {"0.0": False, "0.001": False, "0.003": False, "0.01": True}
    graded = verdict(sig, floors, graded=True)
    assert graded["measure"] == "prob_excess_drop" and graded["floored"] == ["0.01"]  # never tested: floored
    assert list(graded["by_ratio"]) == ["0.001", "0.003"]  # ratio 0 masks nothing
    first, second = graded["by_ratio"]["0.001"], graded["by_ratio"]["0.003"]
    assert first["p_value"] == 0.020 and second["p_value"] == 0.001  # the largest p over the three controls
    assert first["p_holm"] == pytest.approx(0.020) and second["p_holm"] == pytest.approx(0.002)
    # 0.003 has the smaller p but one control (matched) is beaten the wrong way: not a detection there
    assert not second["all_positive"] and not second["detected"] and first["detected"] and graded["detected"]
    # on accuracy the pseudo control's p 0.3 decides 0.001, and 0.003 is all positive with largest p 0.01
    plain = verdict(sig, floors, graded=False)
    assert plain["by_ratio"]["0.001"]["p_value"] == 0.3 and plain["by_ratio"]["0.003"]["p_holm"] == pytest.approx(0.02)
    assert [r for r, x in plain["by_ratio"].items() if x["detected"]] == ["0.003"]
    # nothing above the floor: undecided, never "not detected"
    undecided = verdict(sig, {k: True for k in sig}, graded=True)
    assert undecided["detected"] is None and "undecided" in verdict_sentence(undecided)
    # a null names its power; a detection names its ratio
    assert "detected at 0.1%" in verdict_sentence(graded)
    null = verdict({"0.001": sig["0.001"]}, floors, graded=False)
    said = verdict_sentence(null)
    assert null["detected"] is False and "not detected" in said and "0.030 or more at 0.1%" in said


def test_a_result_carries_its_verdict_recomputed_from_its_own_tests(tiny, tmp_path):
    r = run_pss(*tiny, tmp_path / "r.json", Settings(mode="cloze", ratios=[0.05, 0.5], skip_layers=1, control=True,
                                                       matched_control=True, dtype="float32", concepts=6), quiet=True)
    assert r["verdict"] == verdict(r["significance"], r["floored_by_ratio"], graded=True)
    assert verdict_sentence(r["verdict"]) in summary(r)
