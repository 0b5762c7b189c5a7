"""The controls and tests that let a result decide: the magnitude-matched control, split-half locating,
the zscore locator, the paired tests and the significance section of a result."""

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import minipss
from cli_process import run_minipss
from minipss.cli import main
from minipss.method.benchmark import load_benchmark, unrelated_sets
from minipss.method.controls import (ConceptStats, cell_masks, concept_orders, group_stats, halves_of, index_halves,
                                     split_half, unit_scores)
from minipss.method.pss import question_coefficients, top_k
from minipss.method.prompts import coefficient_prompt
from minipss.run.pipeline import run_pss
from minipss.run.report import significance
from minipss.run.settings import Settings
from minipss.run.stats import (bootstrap_ci, correlation_p, paired_test, pearson, sign_flip_p, spearman,
                               two_sample_test)
from tiny import make_bench, make_tiny_model


def skewed_model(folder, d_ff=512, sigma=0.3):
    """A tiny model whose units differ in magnitude: each row of up_proj scaled by a lognormal factor."""
    make_tiny_model(folder, d_ff=d_ff)
    weights = load_file(folder / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for name in weights:
        if "up_proj" in name:
            weights[name] = weights[name] * torch.exp(sigma * torch.randn(weights[name].shape[0], 1, generator=g))
    save_file(weights, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    d = tmp_path_factory.mktemp("skew")
    folder = skewed_model(d / "m")
    concepts = load_benchmark(make_bench(d / "b.jsonl", n_concepts=7, n_mcq=4))
    model, tok = minipss.load_model(folder), minipss.load_tokenizer(folder)
    per_question = question_coefficients(model, tok, [coefficient_prompt(q) for c in concepts for q in c.mcq])
    counts = [len(c.mcq) for c in concepts]
    halves = [index_halves(n) for n in counts]
    stats = ConceptStats(group_stats(per_question, halves, True), [[4, 2, 2]] * len(concepts),
                         group_stats(per_question, halves, True, squares=True))
    return stats, unrelated_sets(concepts, 5, 0), counts


def test_matched_set_has_the_located_magnitudes_and_the_uniform_set_has_not(skewed):
    stats, others, _ = skewed
    for r in (0.05, 0.1):
        k = top_k(512, r)
        totals = {}
        for i in range(len(others)):
            orders, a = concept_orders(i, ("random", "matched"), k, stats, 0, others[i], 1, seed=0)
            for layer in range(1, 4):
                for kind, order in orders.items():
                    totals[layer, kind] = totals.get((layer, kind), 0) + a[layer, order[layer, :k]].mean().item()
        for layer in range(1, 4):
            located = totals[layer, "located"]
            assert abs(totals[layer, "matched"] / located - 1) < 0.10, (r, layer, totals)
            assert abs(totals[layer, "random"] / located - 1) > 0.25, (r, layer, totals)


def test_matched_sets_nest_and_do_not_depend_on_the_largest_ratio(skewed):
    stats, others, _ = skewed
    small, _ = concept_orders(2, ("matched",), top_k(512, 0.02), stats, 0, others[2], 1, seed=3)
    large, _ = concept_orders(2, ("matched",), top_k(512, 0.3), stats, 0, others[2], 1, seed=3)
    k = top_k(512, 0.02)
    assert torch.equal(small["matched"][1:, :k], large["matched"][1:, :k])
    for order in (small["matched"], large["matched"]):
        assert all(len(set(row.tolist())) == 512 for row in order)  # a permutation per layer
    other_seed, _ = concept_orders(2, ("matched",), k, stats, 0, others[2], 1, seed=4)
    assert not torch.equal(other_seed["matched"][1:, :k], small["matched"][1:, :k])
    # the first choice never takes the first located unit
    assert all(small["matched"][layer, 0] != small["located"][layer, 0] for layer in range(1, 4))


def test_split_half_never_scores_a_question_under_a_mask_located_on_it(skewed):
    stats, others, counts = skewed
    for i in range(len(others)):
        halves = split_half([index_halves(n) for n in counts], i, others[i])
        keys = [(j, k) for j in [i] + others[i] for k in range(counts[j])]
        for h in halves:
            assert not set(h["locate"]) & set(h["score"])
            assert sorted(h["locate"] + h["score"]) == sorted(keys)
        assert sorted(halves[0]["score"] + halves[1]["score"]) == sorted(keys)  # each question scored once
        masks, parts = cell_masks(i, [("located", 0.1), ("random", 0.1), ("matched", 0.1)], stats, others[i],
                                  1, 0, split=True)
        for cell in parts:
            assert len(cell) == 2
            for (row, positions), h in zip(cell, halves):
                assert [keys[p] for p in positions] == h["score"]
        # the located mask of half h is the top of the scores located from half h's questions (group 1 + h)
        for h, (row, _) in enumerate(parts[0]):
            order = torch.sort(unit_scores(i, stats, 1 + h, others[i]), dim=-1, descending=True, stable=True).indices
            zeroed = masks[row, 1:] == 0
            assert torch.equal(zeroed.nonzero()[:, 1].view(3, -1).sort(1).values,
                               order[1:, :top_k(512, 0.1)].sort(1).values)


def test_zscore_ranks_differently_from_diff_and_is_refused_by_unknown_name(skewed, tmp_path):
    stats, others, _ = skewed
    diff, z = unit_scores(0, stats, 0, others[0], "diff"), unit_scores(0, stats, 0, others[0], "zscore")
    assert torch.isfinite(z).all() and not torch.equal(diff.argsort(-1), z.argsort(-1))
    with pytest.raises(ValueError, match="unknown locator"):
        unit_scores(0, stats, 0, others[0], "ratio")
    with pytest.raises(ValueError, match="--locator 'ratio'"):
        Settings(locator="ratio").check()


def test_sign_flip_p_and_bootstrap_interval_by_hand():
    # 4 pairs, |d| = (1, 2, 3, 1), observed sum 5 = 7 - 2 * 1: a pattern is as extreme when the |d| it
    # makes negative sum to at most 1 ({}, {1st}, {4th}) or at least 6 (their complements): p = 6 / 16
    assert sign_flip_p([1, 2, 3, -1]) == pytest.approx(6 / 16)
    assert sign_flip_p([0.5, 0.5, 0.5]) == pytest.approx(2 / 8)
    assert sign_flip_p([0.0, 0.0]) == 1.0
    # two values: the bootstrap mean is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4; the 2.5% and 97.5%
    # points of 10000 draws are the extremes
    assert bootstrap_ci([0.0, 1.0]) == [0.0, 1.0]
    assert bootstrap_ci([0.3] * 5) == [pytest.approx(0.3), pytest.approx(0.3)]
    test = paired_test([0.5, 0.2, 0.4, 0.1], [0.1, 0.3, 0.0, 0.2])
    assert test["difference"] == pytest.approx((0.4 - 0.1 + 0.4 - 0.1) / 4)
    assert test["p_value"] == pytest.approx(sign_flip_p([0.4, -0.1, 0.4, -0.1]))
    # 20 pairs, all positive: Monte Carlo, (count + 1) / (draws + 1) with count near 2 * 2^-20 * draws
    assert sign_flip_p([1.0] * 20, draws=1000) == pytest.approx(1 / 1001)


def test_two_sample_test_and_binomial_chance_by_hand():
    # groups (0, 1) and (2, 3): 6 ways to split 4 values in two pairs; the observed |difference| 2 is
    # reached by this split and its mirror: p near 2 / 6 (Monte Carlo, 20000 draws)
    t = two_sample_test([0.0, 1.0], [2.0, 3.0], draws=20_000)
    assert t["difference"] == -2.0 and t["n"] == [2, 2]
    assert t["p_value"] == pytest.approx(1 / 3, abs=0.02)
    assert t["ci95"] == [pytest.approx(-3.0), pytest.approx(-1.0)]  # resampled means span 0..1 and 2..3
    assert two_sample_test([1.0], [])["p_value"] is None


def test_correlation_p_is_the_share_of_orderings_at_least_as_extreme():
    xs, ys = [1, 2, 3, 4], [1, 2, 3, 4]
    assert pearson(xs, ys) == pytest.approx(1.0)
    assert correlation_p(xs, ys) == pytest.approx(2 / 24)  # the identity and its reverse
    assert correlation_p(xs, ys, spearman) == pytest.approx(2 / 24)
    assert correlation_p([1, 2], [2, 1]) is None


def test_pss_with_every_control_and_split_half_through_the_cli(tmp_path):
    folder = skewed_model(tmp_path / "m", d_ff=64)
    bench = make_bench(tmp_path / "b.jsonl", n_concepts=7, n_mcq=4)
    out = tmp_path / "r.json"
    run_minipss("pss", "--model", folder, "--bench", bench, "--out", out, "--mode", "cloze", "--ratios",
                "0.0,0.05,0.25", "--skip-layers", "1", "--control", "--matched-control", "--split-half", "--quiet")
    r = json.loads(out.read_text())
    assert r["settings"]["matched_control"] and r["settings"]["split_half"]
    assert set(r["matched"]) >= {"pss_by_ratio", "excess_by_ratio", "g_minus_c_by_ratio"}
    for row in r["concepts"]:
        assert set(row["matched_by_ratio"]) == set(row["control_by_ratio"]) == {"0.0", "0.05", "0.25"}
    assert set(r["magnitude_by_ratio"]["0.05"]) == {"located", "random", "matched"}
    assert r["magnitude_by_ratio"]["0.0"]["located"] is None
    assert set(r["magnitude_median_by_ratio"]["0.25"]) == {"located", "random", "matched"}
    assert 0 <= r["matched_shared_by_ratio"]["0.25"] <= 1
    assert r["significance"]["0.05"]["matched"]["excess_drop"]["p_value"] is not None
    # every test of the section, computed here from the file's rows: the mean difference, the exact
    # sign-flip p-value over all 2^7 sign patterns, an interval inside the differences' range
    for ratio in ("0.0", "0.05", "0.25"):
        assert set(r["significance"][ratio]) == {"random", "matched"}
        for kind, key in (("random", "control_by_ratio"), ("matched", "matched_by_ratio")):
            tests = r["significance"][ratio][kind]
            assert {"excess_drop", "g_minus_c", "concept_after", "general_after"} <= set(tests)
            for measure, test in tests.items():
                d = [row["by_ratio"][ratio][measure] - row[key][ratio][measure] for row in r["concepts"]
                     if row["by_ratio"][ratio][measure] is not None and row[key][ratio][measure] is not None]
                assert test["n"] == len(d) == 7, (ratio, kind, measure)
                assert test["difference"] == pytest.approx(sum(d) / len(d), abs=1e-12)
                observed = abs(sum(d)) / len(d)
                extreme = [abs(sum(s * x for s, x in zip(signs, d))) / len(d) >= observed - 1e-12
                           for signs in itertools.product((1, -1), repeat=len(d))]
                assert test["p_value"] == pytest.approx(sum(extreme) / len(extreme)), (ratio, kind, measure)
                lo, hi = test["ci95"]
                assert min(d) - 1e-12 <= lo <= test["difference"] + 1e-12 and test["difference"] - 1e-12 <= hi <= max(d) + 1e-12
    assert any(t["p_value"] < 1 for ratio in r["significance"].values() for kind in ratio.values() for t in kind.values())
    kinds = {line.split(",")[3] for line in out.with_suffix(".csv").read_text().splitlines()[1:]}
    assert kinds == {"located", "random", "matched"}
    # at ratio 0 nothing is masked: every cell is the unmasked accuracy, split or not
    for row in r["concepts"]:
        assert row["matched_by_ratio"]["0.0"]["concept_after"] == row["concept_before"]


def test_matched_control_is_added_to_a_finished_run_and_split_half_is_not(tmp_path):
    folder = make_tiny_model(tmp_path / "m")
    bench = make_bench(tmp_path / "b.jsonl", n_concepts=7, n_mcq=2)
    kw = dict(mode="cloze", ratios=[0.1], skip_layers=1)
    first = run_pss(folder, bench, tmp_path / "r.json", Settings(**kw), quiet=True)
    more = run_pss(folder, bench, tmp_path / "r.json", Settings(matched_control=True, ratios=[0.1, 0.3],
                                                                **{k: v for k, v in kw.items() if k != "ratios"}),
                   quiet=True)
    assert [c["by_ratio"]["0.1"] for c in more["concepts"]] == [c["by_ratio"]["0.1"] for c in first["concepts"]]
    assert "matched" in more and "0.3" in more["matched"]["pss_by_ratio"]
    with pytest.raises(ValueError, match="split_half"):
        run_pss(folder, bench, tmp_path / "r.json", Settings(split_half=True, **kw), quiet=True)


def test_split_half_needs_two_questions_per_concept(tmp_path, capsys):
    folder = make_tiny_model(tmp_path / "m")
    bench = make_bench(tmp_path / "b.jsonl", n_concepts=7, n_mcq=1)
    with pytest.raises(SystemExit):
        main(["pss", "--model", str(folder), "--bench", str(bench), "--out", str(tmp_path / "r.json"),
              "--split-half"])
    assert "needs at least 2" in capsys.readouterr().err and not (tmp_path / "r.json.work").exists()


def test_claims_flip_when_p_crosses_alpha():
    from minipss.run.claims import grows_with_accuracy, located_vs_control

    test = {"difference": 0.05, "ci95": [0.01, 0.09], "n": 30}
    yes = located_vs_control(0.01, "matched", {**test, "p_value": 0.049})
    no = located_vs_control(0.01, "matched", {**test, "p_value": 0.051})
    assert "hurt their own concept more than magnitude-matched" in yes and "p = 0.049" in yes
    assert "no concept-specific difference" in no and "p = 0.051" in no and "[+0.010, +0.090]" in no
    lower = located_vs_control(0.01, "random", {**test, "difference": -0.2, "p_value": 0.001}, "general_after")
    assert "lower accuracy on unrelated questions more than uniform random" in lower
    same = located_vs_control(0.01, "random", {**test, "difference": -0.2, "p_value": 0.2}, "general_after")
    assert "no difference in accuracy on unrelated questions" in same
    less = located_vs_control(0.1, "random", {**test, "difference": -0.05, "p_value": 0.01})
    assert "less than uniform random" in less
    assert "grows with accuracy" in grows_with_accuracy("pss", 0.9, 0.049, 9)
    flat = grows_with_accuracy("pss", 0.9, 0.051, 9)
    assert "no correlation" in flat and "p = 0.051" in flat
    # four models: even a perfect ordering gives p = 2/24, and the sentence says so
    from minipss.run.stats import smallest_p, spearman

    least = smallest_p([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0], spearman)
    assert least == 2 / 24
    assert "smallest possible p on these values is 0.0833" in grows_with_accuracy("excess_drop", 1.0, 2 / 24, 4,
                                                                                  smallest=least)


def test_summary_states_the_tests_of_its_result():
    from minipss.run.report import summary

    cell = {"concept_after": 0.5, "general_after": 0.6, "g_minus_c": 0.1, "pss": 0.2, "excess_drop": 0.1}
    rows = [{"concept": f"c{i}", "tier": "high", "by_ratio": {"0.1": {**cell, "excess_drop": 0.1 + i / 100}},
             "matched_by_ratio": {"0.1": {**cell, "excess_drop": 0.0}}} for i in range(20)]
    result = {"settings": {"mode": "cloze", "skip_layers": 1}, "model": "m", "bench": "b", "concepts": rows,
              "acc_before": 0.6, "pss": 0.2, "excess_drop": 0.1, "pss_by_ratio": {"0.1": 0.2},
              "concept_after_by_ratio": {"0.1": 0.5}, "general_after_by_ratio": {"0.1": 0.6},
              "excess_by_ratio": {"0.1": 0.1}, "tiers": {}, "significance": significance(rows, [0.1])}
    text = summary(result)
    assert "At ratio 10%, located vectors hurt their own concept more than magnitude-matched" in text
    for row in rows:
        row["matched_by_ratio"]["0.1"]["excess_drop"] = row["by_ratio"]["0.1"]["excess_drop"]
    result["significance"] = significance(rows, [0.1])
    assert "At ratio 10%, no concept-specific difference between located vectors and magnitude-matched" in summary(result)
