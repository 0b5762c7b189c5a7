"""Every registered family runs the whole method: `minipss pss` in the three scoring modes and
`minipss train` with each variant, on a tiny random model written by transformers."""

import json

import pytest
import torch

import minipss
from minipss.cli import main
from hf_models import make_method_model, one_row_per_family
from builders import training_text
from tiny import make_bench

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=one_row_per_family())
def family_model(request, tmp_path_factory):
    """(row name, model folder, benchmark of 7 concepts, training text)."""
    d = tmp_path_factory.mktemp(request.param)
    make_method_model(request.param, d / "m")
    bench = make_bench(d / "bench.jsonl", n_concepts=7, n_mcq=2)
    (d / "data.txt").write_text(training_text())
    return request.param, d / "m", bench, d / "data.txt"


@pytest.mark.parametrize("mode", ["cloze", "logits", "generate"])
def test_pss_runs_in_every_mode(family_model, mode, tmp_path):
    name, model, bench, _ = family_model
    out = tmp_path / "r.json"
    main(["pss", "--model", str(model), "--bench", str(bench), "--out", str(out), "--mode", mode,
          "--ratios", "1.0", "--skip-layers", "0", "--quiet"])
    r = json.loads(out.read_text())
    assert len(r["concepts"]) == 7, name
    # every concept has 2 questions: accuracy before masking is the mean of the concepts' own
    assert r["acc_before"] == pytest.approx(sum(c["concept_before"] for c in r["concepts"]) / 7), name
    if mode != "cloze":  # one letter whatever it reads (decoding in every family: test_decoding)
        return
    # masking every value vector changes the answers of a random model somewhere
    cells = [(c["concept_before"], c["general_before"], c["by_ratio"]["1.0"]["concept_after"],
              c["by_ratio"]["1.0"]["general_after"]) for c in r["concepts"]]
    assert any(cb != ca or gb != ga for cb, gb, ca, ga in cells), (name, mode)


@pytest.mark.parametrize("variant", ["fv", "pv", "cv", "rv"])
def test_train_moves_only_the_chosen_value_vectors(family_model, variant, tmp_path):
    name, model, bench, data = family_model
    out = tmp_path / "out"
    main(["train", "--model", str(model), "--data", str(data), "--out", str(out), "--variant", variant,
          "--bench", str(bench), "--concepts", "Concept 0;Concept 1", "--steps", "2", "--lr", "1e-2",
          "--batch-size", "2", "--seq-len", "24", "--warmup", "1", "--quiet"])
    before, after = minipss.load_model(model), minipss.load_model(out)
    chosen = json.loads((out / "value_vectors.json").read_text())["layers"]
    for layer, (w0, w1) in enumerate(zip(before.value_matrices(), after.value_matrices())):
        moved = (w0.weight != w1.weight).any(0)  # per column
        trained = torch.zeros_like(moved)
        trained[chosen[str(layer)]] = True
        assert not moved[~trained].any(), (name, variant, layer)
        assert moved[trained].all(), (name, variant, layer)
    values = {id(m.weight) for m in after.value_matrices()}
    rest = {k: v for k, v in after.state_dict(keep_vars=True).items() if id(v) not in values}
    for key, w in rest.items():
        assert torch.equal(w, before.state_dict()[key]), (name, variant, key)
