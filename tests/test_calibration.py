"""The testbed measuring the real-model protocol: split-half by fact, the calibration's rates and their
per-draw p-values, and the tests over pretraining seeds (minipss.synth.calibration, .findings, run.stats)."""

import json
import math
import random

import pytest

from minipss.method.benchmark import BenchmarkError, benchmark_path, load_benchmark
from minipss.method.controls import halves_of, index_halves, split_half
from minipss.run.stats import ALPHA, t_test, t_two_sided_p
from minipss.synth.calibration import POWER_CONCEPTS, calibrate
from minipss.synth.findings import model_measures, seed_claims
from minipss.synth.study import swapped_bench
from minipss.synth.world import make_world

CALIBRATION_FIELDS = ("power", "power_ci95", "false_positive_rate", "false_positive_ci95", "effect", "draws",
                      "power_by_concepts", "power_by_effect")


def every_calibration_field(c: dict, ratios: list[str], draws: int) -> None:
    """A `calibration` section holds, per ratio, control and measure, every field the study promises, and
    its false-positive rates recompute from its own saved per-draw p-values and differences."""
    assert list(c["by_ratio"]) == ratios
    for r, by in c["by_ratio"].items():
        assert set(by) == {"random", "matched", "pseudo"}
        for control, measures in by.items():
            assert set(measures) == {"excess_drop", "prob_excess_drop"}
            for m, x in measures.items():
                assert set(CALIBRATION_FIELDS) <= set(x) and x["draws"] == draws
                assert list(x["power_by_concepts"]) == [str(n) for n in POWER_CONCEPTS]
                for null, got in x["false_positive_by_null"].items():
                    saved = c["per_draw"][null]
                    p, d = saved["p_value"][r][control][m], saved["difference"][r][control][m]
                    assert len(p) == draws and got["rate"] == sum(pp < ALPHA and dd > 0 for pp, dd in zip(p, d)) / draws
                assert x["false_positive_rate"] == max(v["rate"] for v in x["false_positive_by_null"].values())
                lo, hi = x["power_ci95"]
                assert 0 <= lo <= x["power"] <= hi <= 1


# ---------------------------------------------------------------- split-half by fact


def test_no_fact_has_phrasings_in_both_halves(tmp_path):
    make_world(tmp_path / "w", entities=36, seed=1)
    for name in ("bench.jsonl", "new_bench.jsonl"):
        concepts = load_benchmark(tmp_path / "w" / name)
        for c in concepts:
            halves = halves_of(c.mcq)
            by_fact = {}
            for q, h in zip(c.mcq, halves):
                by_fact.setdefault(q.fact, set()).add(h)
            assert len(by_fact) == 5 and all(len(v) == 1 for v in by_fact.values()), c.name  # one half per fact
            assert sorted(len([h for h in halves if h == x]) for x in (0, 1)) == [4, 6]  # facts 1,3,5 | 2,4
        # through split_half: what locates a mask and what it scores share no (concept, fact)
        halves = [halves_of(c.mcq) for c in concepts]
        others = [[j for j in range(len(concepts)) if j != i][:5] for i in range(len(concepts))]
        for i in range(len(concepts)):
            for part in split_half(halves, i, others[i]):
                facts = lambda keys: {(j, concepts[j].mcq[k].fact) for j, k in keys}
                assert part["locate"] and part["score"] and not facts(part["locate"]) & facts(part["score"])


def test_questions_naming_no_fact_split_by_index_as_before():
    concepts = load_benchmark(benchmark_path())  # the real benchmark: one question per fact, no fact field
    assert all(q.fact is None for c in concepts for q in c.mcq)
    assert all(halves_of(c.mcq) == index_halves(len(c.mcq)) == [k % 2 for k in range(len(c.mcq))] for c in concepts)


def test_a_fact_field_that_is_not_a_name_is_refused(tmp_path):
    line = {"concept": "x", "tier": "high", "mcq": [{"question": "q", "options": dict(zip("ABCD", "abcd")),
                                                     "answer": "A", "fact": ["birth_year"]}]}
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(BenchmarkError, match=r"b.jsonl:1: mcq\[0\].fact: must be a string or an integer"):
        load_benchmark(path)


def test_swapped_chimeras_put_one_concept_in_each_half(tmp_path):
    make_world(tmp_path / "w", entities=36, seed=1)
    bench = tmp_path / "w" / "bench.jsonl"
    chimeras = load_benchmark(swapped_bench(bench, tmp_path / "swapped.jsonl"))
    by_name = {c.name: c for c in load_benchmark(bench)}
    partners = set()
    for c in chimeras:
        own, partner = c.name.split(" / ")
        a, b = by_name[own], by_name[partner]
        assert own != partner and (a.tier, a.category) == (b.tier, b.category) == (c.tier, c.category)
        partners.add(partner)
        texts = {0: set(), 1: set()}
        for q, h in zip(c.mcq, halves_of(c.mcq)):
            texts[h].add(q.question)
        assert texts[0] <= {q.question for q in b.mcq} and texts[1] <= {q.question for q in a.mcq}
        assert len(texts[0]) == 6 and len(texts[1]) == 4
    assert len(partners) == len(chimeras)  # every concept is some chimera's partner exactly once


# ---------------------------------------------------------------- the calibration's rates


def fake_result(effect: float, seed: int, concepts: int = 300) -> dict:
    """A PSS result's per-concept rows: located cells whose excess drop exceeds every control's by `effect`
    plus noise, General_after well above the floor."""
    rng = random.Random(seed)
    rows = []
    for k in range(concepts):
        row = {"tier": ("high", "medium", "low")[k % 3]}
        for key, extra in (("by_ratio", effect), ("control_by_ratio", 0.0), ("matched_by_ratio", 0.0),
                           ("pseudo_by_ratio", 0.0)):
            row[key] = {r: {"excess_drop": extra + rng.gauss(0, 0.1), "prob_excess_drop": extra + rng.gauss(0, 0.05),
                            "general_after": 0.6} for r in ("0.01", "0.05")}
        rows.append(row)
    return {"concepts": rows}


def test_false_positive_rate_recomputes_from_the_saved_draws():
    trained = [fake_result(0.08, s) for s in range(3)]
    nulls = {"untrained": [fake_result(0.0, 10 + s) for s in range(2)],
             "swapped": [fake_result(0.0, 20 + s) for s in range(2)]}
    c = calibrate({"trained": trained, **nulls}, draws=20, seed=0, sign_flips=2000)
    every_calibration_field(c, ["0.01", "0.05"], 20)
    x = c["by_ratio"]["0.01"]["matched"]["prob_excess_drop"]
    assert x["power"] > 0.9 and x["power_by_concepts"]["525"] >= x["power_by_concepts"]["30"]
    assert x["power_by_effect"]["0.25"] < x["power"]  # a quarter of the effect, same spread: seen less often
    all_concepts = [row["by_ratio"]["0.01"]["prob_excess_drop"] - row["matched_by_ratio"]["0.01"]["prob_excess_drop"]
                    for r in trained for row in r["concepts"]]
    assert x["effect"] == pytest.approx(sum(all_concepts) / len(all_concepts))
    # under no effect (pools of 300, draws of 90) the one-sided rate stays near alpha / 2 over the cells
    rates = [y["false_positive_rate"] for by in c["by_ratio"].values() for ms in by.values() for y in ms.values()]
    assert sum(rates) / len(rates) <= 0.12
    pools = x["null_pools"]
    assert [p["null"] for p in pools] == ["untrained", "untrained", "swapped", "swapped"]
    assert all(p["concepts"] == 300 and 0 < p["p_value"] <= 1 for p in pools)
    assert c["decision"]["trained"]["rate"] > 0.8 and c["decision"]["untrained"]["rate"] <= 0.3
    again = calibrate({"trained": trained, **nulls}, draws=20, seed=0, sign_flips=2000)
    assert again["per_draw"] == c["per_draw"]  # seeded


def test_rate_interval_is_wilsons_and_reaches_its_ends():
    from minipss.run.stats import rate_ci

    assert rate_ci(50, 50)[1] == 1.0 and rate_ci(0, 50)[0] == 0.0 and rate_ci(0, 0) is None
    lo, hi = rate_ci(25, 50)  # centre 0.5, half-width z sqrt(0.25 / 50 + z^2 / 10000) / (1 + z^2 / 50)
    z = 1.959964
    half = z * math.sqrt(0.25 / 50 + z * z / 10000) / (1 + z * z / 50)
    assert (lo, hi) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert rate_ci(50, 50)[0] == pytest.approx(50 / (50 + z * z))  # the lower end at all hits: n / (n + z^2)


def test_shared_sign_patterns_give_each_test_its_own_p():
    import numpy as np

    from minipss.run.stats import sign_flip_p, sign_flip_ps

    x = np.random.default_rng(1).normal(0.05, 0.2, size=(90, 5))
    assert sign_flip_ps(x, 3000, 7) == [sign_flip_p(x[:, j], 3000, 7) for j in range(5)]
    small = x[:10]
    assert sign_flip_ps(small, 3000, 7) == [sign_flip_p(small[:, j], 3000, 7) for j in range(5)]  # exact there


# ---------------------------------------------------------------- tests over seeds


def t_p_by_integration(t: float, df: int, steps: int = 20000) -> float:
    """Two-sided p of Student's t by Simpson's rule on its density (an independent computation)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    f = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)
    h = abs(t) / steps
    inside = h / 3 * sum((1 if k in (0, steps) else 4 if k % 2 else 2) * f(k * h) for k in range(steps + 1))
    return 1 - 2 * inside


@pytest.mark.parametrize("t, df", [(2.776, 4), (1.0, 3), (3.6515, 4), (0.3, 1), (2.5, 8), (5.0, 7)])
def test_t_p_value_matches_an_integration_of_the_density(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(t_p_by_integration(t, df), abs=1e-6)


def test_seed_level_test_equals_a_hand_computation():
    late, early = [0.10, 0.12, 0.08, 0.11, 0.09], [0.05, 0.07, 0.06, 0.04, 0.08]
    # paired by seed: differences 0.05 0.05 0.02 0.07 0.01, mean 0.04, sd sqrt(0.0024 / 4), se sd / sqrt(5)
    se = math.sqrt(0.0024 / 4) / math.sqrt(5)
    got = t_test(late, early, paired=True)
    assert got["difference"] == pytest.approx(0.04) and got["df"] == 4 and got["t"] == pytest.approx(0.04 / se)
    assert got["p_value"] == pytest.approx(t_p_by_integration(0.04 / se, 4), abs=1e-6)
    assert got["ci95"] == pytest.approx([0.04 - 2.776445 * se, 0.04 + 2.776445 * se], abs=1e-5)
    # two groups of models (sizes): pooled variance over 8 degrees of freedom
    ss = sum((x - 0.1) ** 2 for x in late) + sum((x - 0.06) ** 2 for x in early)
    se2 = math.sqrt(ss / 8 * (1 / 5 + 1 / 5))
    two = t_test(late, early, paired=False)
    assert two["df"] == 8 and two["n"] == [5, 5] and two["t"] == pytest.approx(0.04 / se2)
    assert two["p_value"] == pytest.approx(t_p_by_integration(0.04 / se2, 8), abs=1e-6)
    # through the study's claim: each model's measure is its mean over concepts of excess beyond matched
    def model(excess_beyond: float, acc: float) -> dict:
        cell = lambda x: {"0.01": {"excess_drop": x}}
        return {"acc_before": acc, "pss": 0.1, "concepts": [{"by_ratio": cell(excess_beyond + e),
                                                             "matched_by_ratio": cell(e)} for e in (0.0, 0.2)]}
    high, low = [model(x, 0.75) for x in late], [model(x, 0.5) for x in early]
    assert model_measures(high[0]) == pytest.approx({"specific": 0.10, "headroom": 0.10 / 0.5, "pss": 0.1})
    claims = {c["measure"]: c for c in seed_claims("it rises", "late minus early", True, high, low)}
    assert claims["specific"]["test"]["p_value"] == pytest.approx(got["p_value"])
    assert claims["specific"]["sentence"].startswith("Detected: it rises")
    headroom = t_test([x / 0.5 for x in late], [x / 0.25 for x in early], paired=True)
    assert claims["headroom"]["test"]["difference"] == pytest.approx(headroom["difference"])
    assert claims["pss"]["sentence"].startswith("Not testable")  # no spread: nothing to test


def test_a_study_folder_made_by_another_protocol_is_refused_not_mixed(tmp_path, capsys):
    from minipss.cli import main
    from minipss.synth.study import StudySettings, record_of

    out = tmp_path / "s"
    out.mkdir()
    old = {k: v for k, v in record_of(StudySettings(out=str(out))).items() if k != "protocol"}
    (out / "minipss.json").write_text(json.dumps(old))  # a study made before the real-model protocol
    with pytest.raises(SystemExit) as stop:
        main(["study-synth", "--out", str(out), "--quiet"])
    assert stop.value.code == 2 and "protocol" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["minipss.json"]
