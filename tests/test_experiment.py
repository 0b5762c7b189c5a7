"""The §5 experiment runs end to end on a tiny model and writes the four-variant table."""

import json

from minipss.cli import main
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
        assert 0 <= row["mcq_acc"] <= 1 and row["lid"] > 0
    assert (out / "table.md").read_text().count("\n") == 2 + 5
    for v in ("fv", "pv", "cv", "rv"):
        assert json.loads((out / v / "value_vectors.json").read_text())["variant"] == v
