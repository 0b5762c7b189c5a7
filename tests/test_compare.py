"""Comparing result files (§6): correlations, the table, bad files, and the figures."""

import json
import math
from types import SimpleNamespace

import pytest

from minipss.method.pss import mean
from minipss.run.stats import pearson, ranks, spearman
from minipss.study.compare import load_results, main, plot, table


def fake_result(model, mode, acc_before, pss_by_ratio, excess=0.01, control=None, tiers=None):
    """A result dict with the fields report.build_result writes (only those compare reads, plus a few)."""
    r = {"model": model, "bench": "bench.jsonl",
         "settings": {"mode": mode, "ratios": [float(k) for k in pss_by_ratio], "skip_layers": 5, "seed": 0},
         "acc_before": acc_before, "pss": mean(pss_by_ratio.values()), "pss_by_ratio": pss_by_ratio,
         "tiers": tiers or {t: {"concepts": 2, "acc_before": acc_before, "pss": p}
                            for t, p in zip(("high", "medium", "low"), (0.3, 0.2, 0.1))},
         "concepts": [], "timing_s": {"total": 1.0}}
    if excess is not None:
        r["excess_drop"] = excess
    if control is not None:
        r["control"] = {"pss_by_ratio": control, "pss": mean(control.values())}
    return r


@pytest.fixture
def results():
    return [fake_result("weights/gemma-3-270m", "cloze", 0.40, {"0.001": 0.05, "0.01": 0.10, "0.1": 0.20},
                        control={"0.001": 0.0, "0.01": 0.01, "0.1": 0.02}),
            fake_result("weights/qwen3-0.6b", "logits", 0.55, {"0.01": 0.15, "0.1": 0.25, "0.5": 0.30}),
            fake_result("/models/llama-1b", "generate", 0.70, {"0.1": 0.35, "0.5": 0.40}, excess=None)]


def write(tmp_path, results):
    paths = []
    for i, r in enumerate(results):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(r))
        paths.append(str(p))
    return paths


# ---- correlations ----

def test_spearman_is_one_and_pearson_below_one_for_monotone_nonlinear_data():
    xs, ys = [1, 2, 3, 4], [1, 4, 9, 16]
    assert spearman(xs, ys) == pytest.approx(1.0)
    assert pearson(xs, ys) == pytest.approx(25 / math.sqrt(5 * 129))  # sxy 25, sxx 5, syy 129
    assert pearson(xs, ys) < 1


def test_perfectly_reversed_data_gives_minus_one():
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_ties_share_the_average_rank():
    assert ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert ranks([5, 5, 5]) == [2, 2, 2]
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]: sxy 4.5, sxx 4.5, syy 5
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_correlations_are_none_for_fewer_than_three_points_or_no_variance():
    assert pearson([1, 2], [3, 4]) is None and spearman([1, 2], [3, 4]) is None
    assert pearson([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2, 3], [7, 7, 7]) is None


# ---- table ----

def test_table_lists_every_result_and_the_correlation_line(results):
    text = table(results)
    for label in ("gemma-3-270m cloze", "qwen3-0.6b logits", "llama-1b generate"):
        assert label in text
    head = text.splitlines()[0]
    for ratio in ("0.001", "0.01", "0.1", "0.5"):  # the union of ratios, in order
        assert ratio in head
    assert head.index("0.001") < head.index("0.01") < head.index("0.1") < head.index("0.5")
    acc, pss = [r["acc_before"] for r in results], [r["pss"] for r in results]
    line = text.splitlines()[-1]
    assert "Pearson" in line and "Spearman" in line
    assert f"{pearson(acc, pss):+.3f}" in line and f"{spearman(acc, pss):+.3f}" in line


def test_table_shows_a_dash_for_missing_excess_drop_and_missing_ratios(results):
    row = next(line for line in table(results).splitlines() if line.startswith("llama-1b"))
    cells = row.split()
    assert cells[4] == "-"  # label is two words, then acc_before, PSS, excess
    assert cells[6:8] == ["-", "-"]  # no PSS at 0.001 and 0.01


def test_table_says_correlations_need_three_results(results):
    assert "n/a" in table(results[:2]).splitlines()[-1]


# ---- reading ----

def test_a_file_that_is_not_a_result_is_rejected_naming_it(tmp_path, results):
    paths = write(tmp_path, results)
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({"concept": "x", "mcq": []}))
    with pytest.raises(ValueError, match=r"bench\.json.*acc_before"):
        load_results(paths + [str(bad)])
    bad.write_text("not json")
    with pytest.raises(ValueError, match=r"bench\.json"):
        load_results([str(bad)])
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        load_results([str(tmp_path / "nowhere.json")])


def test_main_prints_the_table(tmp_path, results, capsys):
    main(SimpleNamespace(results=write(tmp_path, results), plots=None))
    out = capsys.readouterr().out
    assert "qwen3-0.6b logits" in out and "Spearman" in out


# ---- figures ----

def test_plot_writes_the_three_figures(tmp_path, results):
    pytest.importorskip("matplotlib", reason='drawing needs matplotlib: pip install "minipss[plot]"')
    paths = plot(results, tmp_path / "figs")
    assert [p.name for p in paths] == ["fig2_accuracy_vs_pss.png", "fig3_pss_by_ratio.png", "fig5_pss_by_tier.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(tmp_path, results, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r'pip install "minipss\[plot\]"'):
        plot(results, tmp_path / "figs")
