"""`minipss pss` end to end on a tiny model: result fields, resume, seeds, bad benchmarks."""

import json
import re

import pytest

from cli_process import kill_when, line_count, run_minipss
from minipss.cli import main
from minipss.run.pipeline import run_pss
from minipss.run.settings import Settings
from builders import GOOD_CONCEPT as GOOD, bench_with_line, strip_timing
from tiny import make_bench, make_tiny_model


@pytest.fixture(scope="module")
def model_and_bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    return make_tiny_model(d / "m"), make_bench(d / "bench.jsonl", n_concepts=7, n_mcq=2)


SETTINGS = dict(mode="cloze", ratios=[0.0, 0.1, 0.5], skip_layers=1, control=True)


def test_result_file_has_the_interface_fields(model_and_bench, tmp_path):
    model, bench = model_and_bench
    out = tmp_path / "r.json"
    main(["pss", "--model", str(model), "--bench", str(bench), "--out", str(out), "--mode", "cloze",
          "--ratios", "0.1,0.25", "--skip-layers", "1", "--quiet"])
    r = json.loads(out.read_text())
    for key in ("model", "bench", "settings", "acc_before", "pss", "pss_by_ratio", "concepts", "timing_s"):
        assert key in r
    assert list(r["pss_by_ratio"]) == ["0.1", "0.25"]
    c = r["concepts"][0]
    for key in ("concept", "tier", "concept_before", "general_before", "unrelated", "by_ratio", "pss"):
        assert key in c
    assert len(c["unrelated"]) == 5
    assert set(c["by_ratio"]["0.1"]) >= {"concept_after", "general_after", "pss", "excess_drop"}
    assert set(r["timing_s"]) >= {"coefficients", "baseline", "masked", "total"}
    assert out.with_suffix(".csv").read_text().count("\n") == 1 + 7 * 2


def test_ratio_zero_changes_nothing(model_and_bench, tmp_path):
    r = run_pss(*model_and_bench, tmp_path / "r.json", Settings(**SETTINGS), quiet=True)
    assert r["pss_by_ratio"]["0.0"] == 0.0 and r["excess_by_ratio"]["0.0"] == 0.0
    for c in r["concepts"]:
        cell = c["by_ratio"]["0.0"]
        assert (cell["concept_after"], cell["general_after"]) == (c["concept_before"], c["general_before"])


@pytest.mark.slow  # about 10 s on 2 cores; test_interrupts stops the same command every way in the fast tier
def test_killed_run_resumes_to_the_uninterrupted_result(model_and_bench, tmp_path):
    model, bench = model_and_bench
    args = lambda out, *extra: ["pss", "--model", model, "--bench", bench, "--out", out, "--mode", "cloze",
                                "--ratios", "0.0,0.1,0.3,0.5", "--skip-layers", "1", "--control", *extra]
    full = re.findall(r"^\[masked\] \d+/(\d+) rows", run_minipss(*args(tmp_path / "a.json")), re.M)
    out = tmp_path / "b.json"
    cells = tmp_path / "b.json.work" / "cells.jsonl"
    # without the engine each concept's cells are saved as they finish: killed once some masked ones are
    # saved (past the 7 baseline lines), resumed with the engine (same answers, README)
    kill_when(lambda: line_count(cells) > 7, *args(out, "--no-engine", "--quiet"))
    assert not out.exists() and not out.with_suffix(".csv").exists()  # the kill came before the end
    with open(cells, "a") as f:
        f.write('{"key": "located|3|0.1", "corr')  # a line cut off mid-write
    progress = re.findall(r"^\[masked\] \d+/(\d+) rows", run_minipss(*args(out)), re.M)
    assert 0 < int(progress[0]) < int(full[0])  # the masked cells saved before the kill were not redone
    whole = json.loads((tmp_path / "a.json").read_text())
    assert strip_timing(json.loads(out.read_text())) == strip_timing(whole)
    assert out.with_suffix(".csv").read_bytes() == (tmp_path / "a.csv").read_bytes()


def test_same_seed_same_result_other_seed_other_sets(model_and_bench, tmp_path):
    a = run_pss(*model_and_bench, tmp_path / "a.json", Settings(mode="cloze", ratios=[0.2], skip_layers=1), quiet=True)
    b = run_pss(*model_and_bench, tmp_path / "b.json", Settings(mode="cloze", ratios=[0.2], skip_layers=1), quiet=True)
    c = run_pss(*model_and_bench, tmp_path / "c.json", Settings(mode="cloze", ratios=[0.2], skip_layers=1, seed=1), quiet=True)
    assert strip_timing(a)["concepts"] == strip_timing(b)["concepts"]
    assert [x["unrelated"] for x in a["concepts"]] != [x["unrelated"] for x in c["concepts"]]


def test_resume_refuses_work_from_other_settings(model_and_bench, tmp_path):
    run_pss(*model_and_bench, tmp_path / "a.json", Settings(mode="cloze", ratios=[0.2], skip_layers=1), quiet=True)
    with pytest.raises(ValueError, match="other settings"):
        run_pss(*model_and_bench, tmp_path / "a.json", Settings(mode="cloze", ratios=[0.2], skip_layers=2), quiet=True)


def test_skip_at_least_the_layer_count_is_an_error(model_and_bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pss", "--model", str(model_and_bench[0]), "--bench", str(model_and_bench[1]), "--out", str(tmp_path / "r.json"),
              "--skip-layers", "4"])
    assert "leaves nothing to mask" in capsys.readouterr().err


BAD = {
    "invalid JSON": ("{nope", "invalid JSON"),
    "missing field": ({k: v for k, v in GOOD.items() if k != "tier"}, "missing field 'tier'"),
    "bad tier": ({**GOOD, "tier": "huge"}, "tier: 'huge'"),
    "answer not an option": ({**GOOD, "mcq": [{**GOOD["mcq"][0], "answer": "E"}]}, r"mcq\[0\].answer"),
    "three options": ({**GOOD, "mcq": [{**GOOD["mcq"][0], "options": {"A": "a", "B": "b", "C": "c"}}]},
                      r"mcq\[0\].options: needs at least 4"),
    "empty questions": ({**GOOD, "mcq": []}, "mcq: needs a non-empty list"),
    "duplicate concept": (GOOD, "duplicate name 'X'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_benchmark_names_file_line_field_and_writes_nothing(model_and_bench, tmp_path, capsys, case):
    line, message = BAD[case]
    if case == "duplicate concept":
        line, message = {**GOOD, "concept": "C0"}, "duplicate name 'C0'"
    bench = bench_with_line(tmp_path / "bad.jsonl", line, 3)
    out = tmp_path / "out" / "r.json"
    with pytest.raises(SystemExit):
        main(["pss", "--model", str(model_and_bench[0]), "--bench", str(bench), "--out", str(out)])
    err = capsys.readouterr().err
    assert "bad.jsonl:4:" in err and pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_too_few_concepts(model_and_bench, tmp_path, capsys):
    bench = make_bench(tmp_path / "small.jsonl", n_concepts=5)
    with pytest.raises(SystemExit):
        main(["pss", "--model", str(model_and_bench[0]), "--bench", str(bench), "--out", str(tmp_path / "r.json")])
    assert "at least 6" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["cloze", "logits", "generate"])
def test_shared_work_engine_gives_the_plain_result(model_and_bench, tmp_path, mode):
    kw = dict(mode=mode, ratios=[0.1, 0.5], skip_layers=1, control=True)
    fast = run_pss(*model_and_bench, tmp_path / "a.json", Settings(engine=True, **kw), quiet=True)
    plain = run_pss(*model_and_bench, tmp_path / "b.json", Settings(engine=False, **kw), quiet=True)
    assert strip_timing(fast)["concepts"] == strip_timing(plain)["concepts"]
    assert fast["settings"]["engine"] and not plain["settings"]["engine"]


def test_mean_ablation_runs_and_differs_from_zero_masking(model_and_bench, tmp_path):
    kw = dict(mode="cloze", ratios=[0.5], skip_layers=1)
    zero = run_pss(*model_and_bench, tmp_path / "z.json", Settings(**kw), quiet=True)
    mean = run_pss(*model_and_bench, tmp_path / "m.json", Settings(ablation="mean", **kw), quiet=True)
    assert [c["by_ratio"] for c in mean["concepts"]] != [c["by_ratio"] for c in zero["concepts"]]
    fast = run_pss(*model_and_bench, tmp_path / "f.json", Settings(ablation="mean", engine=False, **kw), quiet=True)
    assert strip_timing(fast)["concepts"] == strip_timing(mean)["concepts"]  # p(correct) to fp32 summation order


def test_engine_groups_cover_every_concept_once_within_the_bound():
    from minipss.run.pipeline import engine_groups

    others = [[(i + k) % 9 for k in (1, 2)] for i in range(9)]
    counts = [3] * 9
    groups = list(engine_groups(list(range(9)), others, counts, 12))
    assert [i for g in groups for i in g] == list(range(9)) and len(groups) > 1
    for g in groups:
        assert sum(counts[j] for j in {j for i in g for j in [i] + others[i]}) <= 12
    assert list(engine_groups([0, 1], others, counts, 1)) == [[0], [1]]
