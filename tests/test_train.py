"""The trainer: only the chosen value vectors move, bit for bit; checkpoints reload; resume is exact."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import minipss
from cli_process import run_minipss
from minipss.cli import main
from minipss.method.training import value_vector_sets
from minipss.run.trainer import TrainSettings, train
from builders import kill_training_after_first_checkpoint, train_args, training_text
from tiny import make_bench, make_tiny_model



@pytest.fixture(scope="module")
def model_data_bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    data = d / "data.txt"
    data.write_text(training_text())
    return make_tiny_model(d / "m"), data, make_bench(d / "bench.jsonl", n_concepts=8, n_mcq=2)


def settings(**kw):
    base = dict(steps=4, lr=1e-2, weight_decay=0.1, batch_size=3, seq_len=24, warmup=1)
    base.update(kw)
    return TrainSettings(**base)


def test_variant_sets_follow_the_spec():
    scores = torch.rand(3, 64, generator=torch.Generator().manual_seed(0))
    pv = value_vector_sets("pv", 3, 64, scores, r_pv=0.1)
    assert all(len(v) == 7 for v in pv.values())  # ceil(6.4)
    assert pv[0] == sorted(scores[0].topk(7).indices.tolist())
    cv = value_vector_sets("cv", 3, 64, scores, r_pv=0.1)
    assert all(set(cv[l]) == set(range(64)) - set(pv[l]) for l in range(3))
    rv = value_vector_sets("rv", 3, 64, scores, r_pv=0.1, seed=1)
    assert [len(v) for v in rv.values()] == [7, 7, 7] and rv != pv
    assert value_vector_sets("fv", 3, 64) == {l: list(range(64)) for l in range(3)}


def test_only_chosen_columns_change_and_the_rest_is_bit_identical(model_data_bench, tmp_path):
    model_dir, data, _ = model_data_bench
    before = minipss.load_model(model_dir).state_dict()
    sets = {0: [1, 5], 2: [0, 3, 31], 3: []}
    trained = train(model_dir, data, tmp_path / "out", settings(), sets, quiet=True).state_dict()
    changed = 0
    for name, w in before.items():
        new = trained[name]
        if name.endswith("mlp.down_proj.weight"):
            layer = int(name.split(".")[2])
            cols = torch.zeros(w.shape[1], dtype=torch.bool)
            cols[sets.get(layer, [])] = True
            assert torch.equal(new[:, ~cols], w[:, ~cols]), name
            if cols.any():
                assert not torch.equal(new[:, cols], w[:, cols]), name
                changed += 1
        else:
            assert torch.equal(new, w), name
    assert changed == 2


def test_checkpoint_reloads_to_identical_logits_here_and_in_transformers(model_data_bench, tmp_path):
    model_dir, data, _ = model_data_bench
    out = tmp_path / "out"
    trained = train(model_dir, data, out, settings(), {1: [2, 4]}, quiet=True)
    ids = torch.tensor([[2, 50, 60, 70, 80]])
    with torch.no_grad():
        expect = trained(ids).logits
    assert torch.equal(minipss.load_model(out)(ids).logits, expect)
    assert json.loads((out / "value_vectors.json").read_text()) == {"variant": "pv", "layers": {"1": [2, 4]}}
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    with torch.no_grad():
        assert (hf(ids).logits - expect).abs().max() < 1e-5


@pytest.mark.slow  # about 10 s on 2 cores; test_interrupts stops the same command every way in the fast tier
def test_killed_training_resumes_to_the_uninterrupted_weights(model_data_bench, tmp_path):
    model_dir, data, _ = model_data_bench
    run_minipss(*train_args(model_dir, data, tmp_path / "a"), "--quiet")
    out = tmp_path / "b"
    kill_training_after_first_checkpoint(model_dir, data, out)
    progress = re.findall(r"^\[train (\d+)/100\]", run_minipss(*train_args(model_dir, data, out)), re.M)
    assert int(progress[0]) > 10 and progress[-1] == "100"  # resumed from a checkpoint, not from step 1
    whole, resumed = load_file(tmp_path / "a" / "model.safetensors"), load_file(out / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name, w in whole.items():
        assert torch.equal(resumed[name], w), name
    assert not (out / "trainer_state.json").exists()  # a finished run leaves no resume state


def test_train_command_locates_pv_from_concepts(model_data_bench, tmp_path):
    model_dir, data, bench = model_data_bench
    out = tmp_path / "pv"
    main(["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--variant", "pv",
          "--bench", str(bench), "--concepts", "Concept 1;Concept 2", "--steps", "2", "--quiet", "--r-pv", "0.25"])
    vv = json.loads((out / "value_vectors.json").read_text())
    assert vv["variant"] == "pv" and [len(v) for v in vv["layers"].values()] == [8, 8, 8, 8]
    assert load_file(out / "model.safetensors").keys() == load_file(model_dir / "model.safetensors").keys()


def test_unknown_concept_and_bad_data_are_clear_errors(model_data_bench, tmp_path, capsys):
    model_dir, data, bench = model_data_bench
    with pytest.raises(SystemExit):
        main(["train", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "x"),
              "--variant", "pv", "--bench", str(bench), "--concepts", "Nope"])
    assert "no concept named 'Nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(SystemExit):
        main(["train", "--model", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "y"), "--variant", "fv"])
    assert "bad.jsonl:2: needs a non-empty string field 'text'" in capsys.readouterr().err


def test_pv_can_leave_low_layers_out_and_rv_follows_its_counts():
    scores = torch.rand(4, 40, generator=torch.Generator().manual_seed(2))
    pv = value_vector_sets("pv", 4, 40, scores, r_pv=0.1, first_layer=2)
    assert [len(pv[l]) for l in range(4)] == [0, 0, 4, 4]
    rv = value_vector_sets("rv", 4, 40, scores, r_pv=0.1, first_layer=2)
    assert [len(rv[l]) for l in range(4)] == [0, 0, 4, 4]
    cv = value_vector_sets("cv", 4, 40, scores, r_pv=0.1, first_layer=2)
    assert [len(cv[l]) for l in range(4)] == [40, 40, 36, 36]


def test_bfloat16_runs_the_forward_in_bf16_on_the_cpu_and_keeps_the_rest_fixed(model_data_bench, tmp_path):
    """--dtype bfloat16 is not ignored on the CPU: the steps differ from fp32 ones (bf16 forward), stay
    close to them, and still move only the chosen columns."""
    model_dir, data, _ = model_data_bench
    before = minipss.load_model(model_dir).state_dict()
    sets = {1: [2, 4]}
    runs = {dtype: train(model_dir, data, tmp_path / dtype, settings(dtype=dtype), sets, quiet=True).state_dict()
            for dtype in ("float32", "bfloat16")}
    name = "model.layers.1.mlp.down_proj.weight"
    moved = {k: w[name][:, [2, 4]] - before[name][:, [2, 4]] for k, w in runs.items()}
    assert not torch.equal(moved["float32"], moved["bfloat16"])
    assert (moved["float32"] - moved["bfloat16"]).norm() < 0.2 * moved["float32"].norm()  # Adam's steps: close
    for k, w in before.items():
        if k != name:
            assert torch.equal(runs["bfloat16"][k], w), k
