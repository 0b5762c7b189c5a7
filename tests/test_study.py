"""`minipss study` on tiny random models: per-model runs, reuse, the report's numbers, figures, bad input."""

import importlib.util
import json

import pytest

from minipss.cli import main
from minipss.study.compare import pearson, spearman
from minipss.study.cross_model import common_ratios, summarise

from tiny import make_bench, make_tiny_model


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    models = [make_tiny_model(d / f"m{i}", seed=i) for i in range(3)]
    bench = make_bench(d / "bench.jsonl", n_concepts=7, n_mcq=4)
    out = d / "out"
    argv = ["study", "--models", ",".join(map(str, models)), "--bench", str(bench), "--out", str(out),
            "--ratios", "0.01,0.5", "--ratios-for", f"{models[2]}=0.5", "--concepts", "0", "--dtype", "float32",
            "--bootstrap", "200", "--skip-layers", "1", "--quiet"]
    main(argv)
    return models, bench, out, argv


def test_every_model_gets_its_own_result_with_its_ratios(study):
    models, _, out, _ = study
    results = [json.loads((out / m.name / "result.json").read_text()) for m in models]
    assert [sorted(r["pss_by_ratio"]) for r in results] == [["0.01", "0.5"], ["0.01", "0.5"], ["0.5"]]
    assert all(r["settings"]["mode"] == "cloze" and r["settings"]["control"] for r in results)
    assert all(len(r["concepts"]) == 7 for r in results)


def test_report_numbers_are_the_results_own_over_the_shared_ratios(study):
    models, _, out, _ = study
    data = json.loads((out / "study.json").read_text())
    assert data["common_ratios"] == ["0.5"]
    results = {m.name: json.loads((out / m.name / "result.json").read_text()) for m in models}
    for name, r in results.items():
        row = data["models"][name]
        assert row["acc_before"] == pytest.approx(r["acc_before"])  # 4 MCQs per concept: the plain mean
        assert row["pss"] == pytest.approx(r["pss_by_ratio"]["0.5"])
        assert row["excess_drop"] == pytest.approx(r["excess_by_ratio"]["0.5"])
        assert row["control_pss"] == pytest.approx(r["control"]["pss_by_ratio"]["0.5"])
        for tier, t in r["tiers"].items():
            assert row["tiers"][tier]["acc"] == pytest.approx(t["acc_before"])
        lo, hi = row["acc_ci"]
        assert lo <= hi and 0 <= lo and hi <= 1
    xs = [data["models"][m.name]["acc_before"] for m in models]
    ys = [data["models"][m.name]["pss"] for m in models]
    assert data["accuracy_vs"]["pss"]["pearson"] == pytest.approx(pearson(xs, ys))
    assert data["accuracy_vs"]["pss"]["spearman"] == pytest.approx(spearman(xs, ys))


def test_markdown_report_has_table_1_every_model_and_embeds_the_figures(study):
    pytest.importorskip("matplotlib", reason='drawing needs matplotlib: pip install "minipss[plot]"')
    models, _, out, _ = study
    text = (out / "study.md").read_text()
    assert "## Table 1" in text
    for m in models:
        assert f"| {m.name} | ? |" in text  # not a known model: instruction tuning unknown
    for png in ("fig2_accuracy_vs_pss.png", "fig3_pss_by_ratio.png", "fig5_pss_by_tier.png"):
        assert f"]({png})" in text
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_run_reuses_the_results(study, capsys):
    models, _, out, argv = study
    before = {m.name: (out / m.name / "result.json").stat().st_mtime_ns for m in models}
    main([a for a in argv if a != "--quiet"])
    printed = capsys.readouterr().out
    assert all(f"{m.name}: reusing" in printed for m in models)
    assert {m.name: (out / m.name / "result.json").stat().st_mtime_ns for m in models} == before
    last = printed.splitlines()[-1]
    # the run ends by naming what it wrote: the figures where matplotlib is installed, else the report
    assert ("figure: " if importlib.util.find_spec("matplotlib") else "report: ") in last


def test_bootstrap_over_one_concept_set_gives_no_interval_below_twenty_draws():
    rows = [{"concept": f"c{i}", "tier": "high", "concept_before": 0.5,
             "by_ratio": {"0.1": {"concept_after": 0.2, "general_after": 0.4, "pss": 0.4, "excess_drop": 0.1}}}
            for i in range(3)]
    result = {"pss_by_ratio": {"0.1": 0.4}, "g_minus_c_by_ratio": {"0.1": 0.2}, "excess_by_ratio": {"0.1": 0.1},
              "concepts": rows}
    s = summarise({"a": result, "b": result}, {"a": True, "b": False}, n_boot=5)
    assert common_ratios({"a": result}) == ["0.1"]
    assert s["models"]["a"]["pss"] == pytest.approx(abs(0.4 - 0.2) / 0.5)
    assert s["models"]["a"]["pss_ci"] is None and s["accuracy_vs"]["pss"]["pearson"] is None
    assert s["models"]["a"]["excess_drop"] == pytest.approx(0.1)


@pytest.mark.parametrize("extra, message", [
    (["--models", "only-one"], "two or more"),
    (["--ratios-for", "nobody=0.1"], "does not list"),
    (["--ratios", "0.1,2"], "outside"),
])
def test_bad_arguments_exit_2_with_a_message(study, tmp_path, capsys, extra, message):
    models, bench, _, _ = study
    argv = ["study", "--models", f"{models[0]},{models[1]}", "--bench", str(bench), "--out", str(tmp_path / "o"),
            *extra]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_unknown_model_name_is_named(tmp_path, capsys):
    bench = make_bench(tmp_path / "b.jsonl", n_concepts=7)
    with pytest.raises(SystemExit) as e:
        main(["study", "--models", f"no-such-model,{tmp_path}", "--bench", str(bench), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "no-such-model" in capsys.readouterr().err


def test_figure_2_draws_a_point_outside_its_own_bootstrap_interval(study, tmp_path):
    """Model PSS is a ratio of means over all concepts, so it may lie outside the percentile interval of
    its bootstrap draws (it did on the real models); the figure must still be drawn."""
    pytest.importorskip("matplotlib", reason='drawing needs matplotlib: pip install "minipss[plot]"')
    from minipss.study.cross_model import plot

    _, _, out, _ = study
    summary = json.loads((out / "study.json").read_text())
    for m in summary["models"].values():
        m["pss_ci"] = [m["pss"] + 0.1, m["pss"] + 0.2]
        m["acc_ci"] = [m["acc_before"] - 0.2, m["acc_before"] - 0.1]
    paths = plot(summary, tmp_path)
    assert [p.name for p in paths] == ["fig2_accuracy_vs_pss.png", "fig3_pss_by_ratio.png",
                                       "fig5_pss_by_tier.png"]
    import matplotlib.image

    for p in paths:  # an image with something drawn on it
        pixels = matplotlib.image.imread(p)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels[..., :3].std() > 0.05, p.name

def test_study_with_both_controls_and_split_half_reports_the_tests(tmp_path):
    models = [make_tiny_model(tmp_path / f"m{i}", seed=i) for i in range(2)]
    bench = make_bench(tmp_path / "bench.jsonl", n_concepts=7, n_mcq=2)
    out = tmp_path / "out"
    main(["study", "--models", ",".join(map(str, models)), "--bench", str(bench), "--out", str(out),
          "--ratios", "0.1,0.5", "--concepts", "0", "--dtype", "float32", "--bootstrap", "20", "--skip-layers", "1",
          "--matched-control", "--split-half", "--quiet"])
    data = json.loads((out / "study.json").read_text())
    for m in models:
        r = json.loads((out / m.name / "result.json").read_text())
        assert r["settings"]["matched_control"] and r["settings"]["split_half"]
        row = data["models"][m.name]
        assert row["matched_pss"] is not None and set(row["tests"]["0.1"]) == {"random", "matched"}
        assert row["tests"] == r["significance"]
    assert data["accuracy_vs"]["pss"]["spearman_p"] is None  # two models: no correlation to test
    text = (out / "study.md").read_text()
    assert "## Located against the controls" in text and "matched: excess drop" in text
    assert "located vectors" in text and "folds away from 0" in text
    assert "## By popularity tier (Figure 5), at the shared ratios 10%, 50%" in text


def test_study_options_reach_each_models_run(tmp_path):
    """`--no-control`, `--locator` and `--mode` of `minipss study` give each model the run `minipss pss`
    gives with the same options (and no random control)."""
    model, other = make_tiny_model(tmp_path / "m0"), make_tiny_model(tmp_path / "m1", seed=1)
    bench = make_bench(tmp_path / "bench.jsonl", n_concepts=7, n_mcq=2)
    common = ["--bench", str(bench), "--ratios", "0.1,0.5", "--skip-layers", "1", "--dtype", "float32",
              "--locator", "zscore", "--mode", "logits", "--quiet"]
    main(["study", "--models", f"{model},{other}", "--out", str(tmp_path / "out"), "--concepts", "0", "--bootstrap", "20",
          "--no-control", *common])
    main(["pss", "--model", str(model), "--out", str(tmp_path / "pss.json"), *common])
    got = json.loads((tmp_path / "out" / "m0" / "result.json").read_text())
    want = json.loads((tmp_path / "pss.json").read_text())
    assert got["settings"]["control"] is False and got["settings"]["locator"] == "zscore"
    assert got["settings"]["mode"] == "logits"
    assert all("control_by_ratio" not in c for c in got["concepts"])
    assert got["concepts"] == want["concepts"] and got["pss"] == want["pss"]


def test_study_pseudo_control_reaches_each_models_run_and_its_report(tmp_path):
    model, other = make_tiny_model(tmp_path / "m0"), make_tiny_model(tmp_path / "m1", seed=1)
    bench = make_bench(tmp_path / "bench.jsonl", n_concepts=9, n_mcq=2)
    main(["study", "--models", f"{model},{other}", "--out", str(tmp_path / "out"), "--concepts", "0", "--bootstrap",
          "20", "--bench", str(bench), "--ratios", "0.1", "--skip-layers", "1", "--dtype", "float32", "--mode",
          "cloze", "--no-control", "--pseudo-control", "--quiet"])
    got = json.loads((tmp_path / "out" / "m0" / "result.json").read_text())
    assert got["settings"]["pseudo_control"] and all("pseudo_by_ratio" in c for c in got["concepts"])
    report = (tmp_path / "out" / "study.md").read_text()
    assert "| m0 | 10% (floored) | pseudo |" in report or "| m0 | 10% | pseudo |" in report
    assert "mde80" in report
