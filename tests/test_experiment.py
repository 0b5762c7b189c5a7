"""The §5 experiment runs end to end on a tiny model and writes the four-variant table."""

import json

import minipss
from minipss.cli import main
from minipss.method.benchmark import load_benchmark
from minipss.method.pss import mcq_answers
from minipss.finetune.experiment import METRICS
from tiny import make_bench, make_tiny_model


def test_experiment_writes_a_row_per_variant_with_every_metric(tmp_path):
    model = make_tiny_model(tmp_path / "m")
    bench = make_bench(tmp_path / "bench.jsonl", n_concepts=7, n_mcq=2)
    data = tmp_path / "passages.jsonl"
    data.write_text("".join(json.dumps({"concept": f"Concept {i}", "text": f"Concept {i} is c{i}."}) + "\n"
                            for i in range(7)))
    out = tmp_path / "exp"
    names = ";".join(f"Concept {i}" for i in range(7))
    main(["experiment", "--model", str(model), "--out", str(out), "--bench", str(bench), "--data", str(data),
          "--concepts", names, "--steps", "2", "--samples", "2", "--open-tokens", "3", "--skip-layers", "1",
          "--ratios", "0.2", "--mode", "logits", "--dtype", "float32", "--quiet"])
    table = json.loads((out / "table.json").read_text())["table"]
    assert list(table) == ["before", "FT-FV", "FT-PV", "FT-CV", "FT-RV"]
    qs = [q for c in load_benchmark(bench) for q in c.mcq]
    folders = {"before": model, **{f"FT-{v.upper()}": out / v for v in ("fv", "pv", "cv", "rv")}}
    for name, folder in folders.items():
        row = table[name]
        assert set(row) == set(METRICS)
        # each model's own logits-mode accuracy on the concepts' questions, computed here
        answers = mcq_answers(minipss.load_model(folder), minipss.load_tokenizer(folder), qs, "logits")
        assert row["mcq_acc"] == sum(a == q.answer for a, q in zip(answers, qs)) / len(qs), name
        assert row["pss"] == json.loads((out / f"eval-{name}" / "pss.json").read_text())["pss"], name
        assert 0 <= row["open_acc"] <= 1 and row["semantic_entropy"] >= 0, name
    # one row's PSS against an independent `minipss pss` run of that model with the same settings
    main(["pss", "--model", str(out / "pv"), "--bench", str(bench), "--out", str(tmp_path / "pv.json"),
          "--mode", "logits", "--ratios", "0.2", "--skip-layers", "1", "--dtype", "float32", "--quiet"])
    assert table["FT-PV"]["pss"] == json.loads((tmp_path / "pv.json").read_text())["pss"]
    assert (out / "table.md").read_text().count("\n") == 2 + 5
    for v in ("fv", "pv", "cv", "rv"):
        assert json.loads((out / v / "value_vectors.json").read_text())["variant"] == v
