"""Every registered family runs the whole method: `minipss pss` in the three scoring modes and
`minipss train` with each variant, on a tiny random model written by transformers."""

import inspect
import json

import pytest
import torch

import minipss
from minipss.cli import main
from minipss.model.families import family_of
from hf_models import CONFIGS, make_hf_model
from tiny import byte_tokenizer, make_bench

transformers = pytest.importorskip("transformers")


def one_row_per_family() -> list[str]:
    """The first parity-table row of each registered family."""
    rows = {}
    for name, (cls_name, _) in CONFIGS.items():
        rows.setdefault(family_of(getattr(transformers, cls_name).model_type).model_types, name)
    return sorted(rows.values())

DOCS = "\n\n".join(f"Concept {i} is known for fact number {i * 7}, said the record." for i in range(8))


@pytest.fixture(scope="module", params=one_row_per_family())
def family_model(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    cls = getattr(transformers, CONFIGS[request.param][0])
    context = "max_seq_len" if "max_seq_len" in inspect.signature(cls.__init__).parameters else "max_position_embeddings"
    # the byte tokenizer's vocabulary, and room for the 3-shot prompt (about 500 bytes)
    hf = make_hf_model(request.param, d / "m", vocab_size=259, **{context: 1024})
    with torch.no_grad():  # weights large enough that the MLPs matter (HF initialises at std 0.02)
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    hf.save_pretrained(d / "m", safe_serialization=True)
    byte_tokenizer().save(str(d / "m" / "tokenizer.json"))
    bench = make_bench(d / "bench.jsonl", n_concepts=7, n_mcq=2)
    (d / "data.txt").write_text(DOCS)
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
    if mode != "cloze":  # a random model answers one letter whatever it reads: nothing more to compare
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
