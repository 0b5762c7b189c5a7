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
          "--ratios", "0.2", "--quiet"])
    table = json.loads((out / "table.json").read_text())["table"]
    assert list(table) == ["before", "FT-FV", "FT-PV", "FT-CV", "FT-RV"]
    for row in table.values():
        assert set(row) == set(METRICS)
    # the untouched model's row: its own cloze accuracy on the concepts' questions, its own PSS run
    qs = [q for c in load_benchmark(bench) for q in c.mcq]
    answers = mcq_answers(minipss.load_model(model), minipss.load_tokenizer(model), qs, "cloze")
    assert table["before"]["mcq_acc"] == sum(a == q.answer for a, q in zip(answers, qs)) / len(qs)
    assert table["before"]["pss"] == json.loads((out / "eval-before" / "pss.json").read_text())["pss"]
    assert (out / "table.md").read_text().count("\n") == 2 + 5
    for v in ("fv", "pv", "cv", "rv"):
        assert json.loads((out / v / "value_vectors.json").read_text())["variant"] == v
