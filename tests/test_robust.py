"""A careless or hurried user: every bad input is refused before any work with a message naming it (exit
code 2), no input is written over, and resumed work is reused only when it was computed from the same
contents and settings."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import minipss
from cli_process import kill_when, line_count, run_minipss
from minipss.cli import main
from minipss.run.pipeline import run_pss
from minipss.run.settings import Settings
from minipss.run.trainer import TrainSettings, train
from builders import (GOOD_CONCEPT, bench_with_line, copy_model, kill_training_after_first_checkpoint, shard_checkpoint,
                      strip_timing, training_text)
from tiny import make_bench, make_tiny_model

FAST = dict(mode="cloze", ratios=[0.1, 0.5], skip_layers=1)


@pytest.fixture(scope="module")
def model_and_bench(tmp_path_factory):
    """(tiny model folder, benchmark of 7 concepts)."""
    d = tmp_path_factory.mktemp("robust")
    return make_tiny_model(d / "m"), make_bench(d / "bench.jsonl", n_concepts=7, n_mcq=2)


def refused(capsys, argv, *patterns):
    """Run the CLI, expect exit code 2 and every pattern in the message; returns the message."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for p in patterns:
        assert re.search(p, err), err
    assert "Traceback" not in err
    return err


def pss_argv(model, bench, out, *extra):
    return ["pss", "--model", str(model), "--bench", str(bench), "--out", str(out), "--mode", "cloze",
            "--ratios", "0.1", "--skip-layers", "1", "--quiet", *extra]


# ------------------------------------------------------------------ silent wrong results


def test_new_weights_in_the_same_folder_are_not_resumed(model_and_bench, tmp_path):
    model = make_tiny_model(tmp_path / "m", seed=0)
    bench = model_and_bench[1]
    run_pss(model, bench, tmp_path / "r.json", Settings(**FAST), quiet=True)
    make_tiny_model(tmp_path / "m", seed=1)  # other weights, same path, same shapes
    with pytest.raises(ValueError, match=r"other settings or inputs \(model weights: \w+ then, \w+ now\).*remove the folder"):
        run_pss(model, bench, tmp_path / "r.json", Settings(**FAST), quiet=True)
    shutil.rmtree(tmp_path / "r.json.work")  # as the message says
    again = run_pss(model, bench, tmp_path / "r.json", Settings(**FAST), quiet=True)
    fresh = run_pss(model, bench, tmp_path / "fresh.json", Settings(**FAST), quiet=True)
    assert strip_timing(again)["concepts"] == strip_timing(fresh)["concepts"]


def test_deleted_settings_and_another_seed_recompute_everything(model_and_bench, tmp_path):
    run_pss(*model_and_bench, tmp_path / "r.json", Settings(**FAST), quiet=True)
    (tmp_path / "r.json.work" / "settings.json").unlink()
    other_seed = run_pss(*model_and_bench, tmp_path / "r.json", Settings(seed=3, **FAST), quiet=True)
    fresh = run_pss(*model_and_bench, tmp_path / "fresh.json", Settings(seed=3, **FAST), quiet=True)
    assert strip_timing(other_seed) == strip_timing(fresh)


def test_other_benchmark_content_is_refused(model_and_bench, tmp_path):
    bench = tmp_path / "b.jsonl"
    shutil.copy(model_and_bench[1], bench)
    run_pss(model_and_bench[0], bench, tmp_path / "r.json", Settings(**FAST), quiet=True)
    bench.write_text(bench.read_text().replace("fact 0", "fact zero"))
    with pytest.raises(ValueError, match=r"bench: \w+ then"):
        run_pss(model_and_bench[0], bench, tmp_path / "r.json", Settings(**FAST), quiet=True)


@pytest.mark.parametrize("options, answer", [({L: L.lower() for L in "ABCDE"}, "E"),
                                             ({str(i): str(i) for i in range(1, 5)}, "1")])
def test_benchmarks_the_scorer_cannot_answer_are_refused_at_load(model_and_bench, tmp_path, capsys, options, answer):
    rows = [json.loads(line) for line in model_and_bench[1].read_text().splitlines()]
    rows[2]["mcq"][1] = {"question": "q?", "options": options, "answer": answer}
    bench = tmp_path / "b.jsonl"
    bench.write_text("\n".join(map(json.dumps, rows)) + "\n")
    refused(capsys, pss_argv(model_and_bench[0], bench, tmp_path / "r.json"),
            r"b.jsonl:3: mcq\[1\].options: keys must be exactly A, B, C, D")
    assert not (tmp_path / "r.json.work").exists()


@pytest.mark.parametrize("argv, message", [
    (["--concepts", "0"], r"--concepts: must be 6 or more, got 0"),
    (["--concepts", "-1"], r"--concepts: must be 6 or more, got -1"),
    (["--skip-layers", "-1"], r"--skip-layers: must be 0 or more, got -1"),
    (["--ratios", ""], r"--ratios: expected at least one number"),
    (["--ratios", "0.1,1.5"], r"--ratios: 1.5 is outside \[0, 1\]"),
    (["--ratios", "0.1,nan"], r"--ratios: nan is outside \[0, 1\]"),
    (["--ratios", "0.1,0.1"], r"lists a ratio twice"),
    (["--batch-size", "0"], r"--batch-size: must be 1 or more, got 0"),
    (["--seed", "-1"], r"--seed -1: must be in \[0, 2\*\*32\)"),
    (["--device", "tpu"], r"--device 'tpu': choose cpu, cuda or cuda:N"),
])
def test_out_of_range_options_exit_2_before_any_work(model_and_bench, tmp_path, capsys, argv, message):
    out = tmp_path / "r.json"
    refused(capsys, pss_argv(*model_and_bench, out) + argv, message)
    assert not out.exists() and not (tmp_path / "r.json.work").exists()


def test_cuda_without_cuda_is_a_clean_error(model_and_bench, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(capsys, pss_argv(*model_and_bench, tmp_path / "r.json", "--device", "cuda"), "CUDA is not available")
    refused(capsys, ["train", "--model", str(model_and_bench[0]), "--data", str(model_and_bench[1]), "--out", str(tmp_path / "t"),
                     "--variant", "fv", "--device", "cuda"], "CUDA is not available")


def test_non_finite_weights_are_refused_naming_the_tensor(model_and_bench, tmp_path, capsys):
    model = copy_model(model_and_bench[0], tmp_path)
    state = load_file(model / "model.safetensors")
    state["model.layers.2.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(state, model / "model.safetensors")
    refused(capsys, pss_argv(model, model_and_bench[1], tmp_path / "r.json"),
            r"model.safetensors: tensor 'model.layers.2.mlp.up_proj.weight' holds NaN or infinite values")
    state["model.layers.2.mlp.up_proj.weight"][3, 4] = float("inf")
    save_file(state, model / "model.safetensors")
    with pytest.raises(ValueError, match="up_proj.weight' holds NaN or infinite"):
        minipss.load_model(model)


def test_activations_that_overflow_are_reported_in_the_result(model_and_bench, tmp_path):
    model = copy_model(model_and_bench[0], tmp_path)
    state = load_file(model / "model.safetensors")
    for name in ("gate_proj", "up_proj"):  # finite weights whose products overflow float32
        state[f"model.layers.0.mlp.{name}.weight"].fill_(1e25)
    save_file(state, model / "model.safetensors")
    r = run_pss(model, model_and_bench[1], tmp_path / "r.json", Settings(**FAST), quiet=True)
    assert r["nonfinite_activations"] == [f"Concept {i}" for i in range(7)]
    assert "NaN or infinite" in r["warning"]
    assert json.loads((tmp_path / "r.json").read_text())["nonfinite_activations"] == r["nonfinite_activations"]


# ------------------------------------------------------------------ files never destroyed


def test_out_paths_are_checked_before_any_work_and_inputs_are_never_written(model_and_bench, tmp_path, capsys):
    bench = tmp_path / "bench.jsonl"
    shutil.copy(model_and_bench[1], bench)
    before = bench.read_bytes()
    refused(capsys, pss_argv(model_and_bench[0], bench, tmp_path / "r.csv"), r"--out .*r.csv: the result is JSON and its CSV")
    refused(capsys, pss_argv(model_and_bench[0], bench, bench), r"would write .*bench.jsonl, which is an input")
    csv_bench = tmp_path / "b.csv"  # the CSV beside the JSON would be the benchmark
    shutil.copy(model_and_bench[1], csv_bench)
    refused(capsys, pss_argv(model_and_bench[0], csv_bench, tmp_path / "b.json"), r"would write .*b.csv, which is an input")
    refused(capsys, pss_argv(model_and_bench[0], bench, model_and_bench[0] / "config.json"), r"which is an input")
    (tmp_path / "adir").mkdir()
    refused(capsys, pss_argv(model_and_bench[0], bench, tmp_path / "adir"), r"adir is an existing folder")
    (tmp_path / "afile").write_text("x")
    refused(capsys, pss_argv(model_and_bench[0], bench, tmp_path / "afile" / "r.json"), r"afile is a file, not a folder")
    assert bench.read_bytes() == before and csv_bench.read_bytes() == model_and_bench[1].read_bytes()
    assert not list(tmp_path.glob("*.work"))


# ------------------------------------------------------------------ clean errors: benchmark


GOOD = GOOD_CONCEPT
BAD_BENCH = {
    "list answer": ({**GOOD, "mcq": [{**GOOD["mcq"][0], "answer": ["A"]}]}, r"mcq\[0\].answer: \['A'\] is not among"),
    "list concept": ({**GOOD, "concept": ["X"]}, r"concept: must be a non-empty string"),
    "number category": ({**GOOD, "category": 3}, r"category: must be a string, got 3"),
    "list tier": ({**GOOD, "tier": ["high"]}, r"tier: \['high'\] is not one of"),
    "number question": ({**GOOD, "mcq": [{**GOOD["mcq"][0], "question": 7}]}, r"mcq\[0\].question: must be a non-empty"),
    "text popularity": ({**GOOD, "popularity": "many"}, r"popularity: must be a number or null"),
    "number open answer": ({**GOOD, "open": [{"question": "q", "answer": 3}]}, r"open\[0\]: needs non-empty string"),
}


@pytest.mark.parametrize("case", sorted(BAD_BENCH))
def test_malformed_fields_name_the_line_before_any_work(model_and_bench, tmp_path, capsys, case):
    row, message = BAD_BENCH[case]
    bench = bench_with_line(tmp_path / "bad.jsonl", row, 4)
    refused(capsys, pss_argv(model_and_bench[0], bench, tmp_path / "out" / "r.json"), "bad.jsonl:5: " + message)
    assert not (tmp_path / "out").exists()


def test_non_utf8_benchmark_names_the_line(model_and_bench, tmp_path, capsys):
    lines = model_and_bench[1].read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b"fact", b"f\xe9ct", 1)  # latin-1
    bench = tmp_path / "latin1.jsonl"
    bench.write_bytes(b"\n".join(lines))
    refused(capsys, pss_argv(model_and_bench[0], bench, tmp_path / "r.json"), r"latin1.jsonl:5: not UTF-8 text \(byte 0xe9")


@pytest.mark.parametrize("mode", ["cloze", "generate", "logits"])
def test_prompts_past_the_context_are_refused_before_any_work(model_and_bench, tmp_path, capsys, mode):
    rows = [json.loads(line) for line in model_and_bench[1].read_text().splitlines()]
    rows[5]["mcq"][1]["question"] = "why " * 7500  # 30,000 characters
    bench = tmp_path / "long.jsonl"
    bench.write_text("\n".join(map(json.dumps, rows)) + "\n")
    argv = pss_argv(model_and_bench[0], bench, tmp_path / "r.json")
    argv[argv.index("cloze")] = mode
    refused(capsys, argv, r"long.jsonl:6: concept 'Concept 5' mcq\[1\]: its \w+ prompt needs 300\d\d positions; "
                          r"the model reads at most 1024 \(max_position_embeddings")
    assert not (tmp_path / "r.json.work").exists()
    # just past the limit is refused too: the generated tokens count
    rows[5]["mcq"][1]["question"] = "x" * 1010
    bench.write_text("\n".join(map(json.dumps, rows)) + "\n")
    refused(capsys, argv, r"its \w+ prompt needs \d+ positions; the model reads at most 1024")


# ------------------------------------------------------------------ clean errors: model folder


def test_truncated_or_corrupted_safetensors_names_the_file(model_and_bench, tmp_path, capsys):
    model = copy_model(model_and_bench[0], tmp_path)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    refused(capsys, pss_argv(model, model_and_bench[1], tmp_path / "r.json"),
            r"m/model.safetensors: not a readable safetensors file, truncated or damaged")
    (model / "model.safetensors").write_bytes(b"\xff" * 8 + data[8:])
    refused(capsys, pss_argv(model, model_and_bench[1], tmp_path / "r.json"), r"m/model.safetensors: not a readable")
    assert not (tmp_path / "r.json.work").exists()


def test_a_damaged_shard_is_named(model_and_bench, tmp_path):
    model = copy_model(model_and_bench[0], tmp_path)
    shard = shard_checkpoint(model)[1]
    minipss.load_model(model)  # the sharded folder loads
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model-00002-of-00002.safetensors: not a readable safetensors"):
        minipss.load_model(model)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors", ".."])
def test_shard_index_pointing_outside_the_folder_is_refused(model_and_bench, tmp_path, name):
    model = copy_model(model_and_bench[0], tmp_path)
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": name}}))
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: lists .* not a file inside the model folder"):
        minipss.load_model(model)


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": -32}, r"hidden_size must be a positive integer, got -32"),
    ({"num_attention_heads": 0}, r"num_attention_heads must be a positive integer, got 0"),
    ({"num_hidden_layers": 0}, r"num_hidden_layers must be a positive integer, got 0"),
    ({"intermediate_size": 32.5}, r"intermediate_size must be a positive integer, got 32.5"),
    ({"vocab_size": "259"}, r'vocab_size must be a positive integer, got "259"'),
    ({"num_key_value_heads": 3}, r"num_attention_heads \(4\) is not a multiple of num_key_value_heads \(3\)"),
    ({"eos_token_id": [1, -7]}, r"eos_token_id must be a token id \(an integer >= 0\), got -7"),
    ({"rms_norm_eps": -1}, r"the norm epsilon must be a positive number, got -1"),
    ({"vocab_size": 10 ** 9, "hidden_size": 10 ** 6}, r"the config describes about \d+\.\dB parameters .* more than the"),
])
def test_absurd_configs_are_refused_before_allocating(model_and_bench, tmp_path, capsys, change, message):
    model = copy_model(model_and_bench[0], tmp_path)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, **change}))
    refused(capsys, pss_argv(model, model_and_bench[1], tmp_path / "r.json"), r"m/config.json: " + message)


# ------------------------------------------------------------------ damaged work folders


def test_damaged_work_is_recomputed_to_the_uninterrupted_result(model_and_bench, tmp_path):
    whole = run_pss(*model_and_bench, tmp_path / "a.json", Settings(control=True, **FAST), quiet=True)
    run_pss(*model_and_bench, tmp_path / "b.json", Settings(control=True, **FAST), quiet=True)
    work = tmp_path / "b.json.work"
    coeffs = work / "coefficients.safetensors"
    coeffs.write_bytes(coeffs.read_bytes()[:-50])  # truncated
    lines = (work / "cells.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    row["correct"] = row["correct"][:-1]  # a cell list of the wrong length
    lines[3] = json.dumps(row)
    lines[5] = json.dumps({**json.loads(lines[5]), "run": "another"})  # from another record
    (work / "cells.jsonl").write_text("\n".join(lines) + "\n")
    again = run_pss(*model_and_bench, tmp_path / "b.json", Settings(control=True, **FAST), quiet=True)
    assert strip_timing(again) == strip_timing(whole)


@pytest.mark.slow  # about 10-20 s on 2 cores: kept out of the fast tier, run in CI
def test_a_run_killed_twice_with_a_cut_line_between_resumes_to_the_uninterrupted_result(model_and_bench, tmp_path):
    model, bench = model_and_bench
    args = lambda out: ["pss", "--model", model, "--bench", bench, "--out", out, "--mode", "cloze",
                        "--ratios", "0.1,0.3,0.5", "--skip-layers", "1", "--control", "--quiet"]
    run_minipss(*args(tmp_path / "a.json"))
    out = tmp_path / "r.json"
    cells = tmp_path / "r.json.work" / "cells.jsonl"
    kill_when(lambda: line_count(cells) >= 1, *args(out))  # killed once its first cell is saved
    assert not out.exists()
    with open(cells, "a") as f:
        f.write('{"key": "located|3|0.1", "corr')  # the kill cut this line
    saved = line_count(cells)
    kill_when(lambda: line_count(cells) > saved, *args(out))  # the resumed run saves more, then is killed
    assert not out.exists()
    run_minipss(*args(out))
    whole = json.loads((tmp_path / "a.json").read_text())
    assert strip_timing(json.loads(out.read_text())) == strip_timing(whole)


# ------------------------------------------------------------------ the trainer


DOCS = training_text()


def small(**kw):
    base = dict(steps=100, lr=1e-2, batch_size=3, seq_len=24, warmup=1, save_every=10)
    base.update(kw)
    return TrainSettings(**base)


@pytest.fixture(scope="module")
def killed_training(model_and_bench, tmp_path_factory):
    """The folder of an `fv` training run (the settings of `small`) killed after its first checkpoint."""
    d = tmp_path_factory.mktemp("killed")
    data, out = d / "data.txt", d / "out"
    data.write_text(DOCS)
    kill_training_after_first_checkpoint(model_and_bench[0], data, out)
    return data, out


@pytest.mark.parametrize("change, differs", [
    (dict(variant="pv"), r"variant: \"fv\" then, \"pv\" now"),
    (dict(lr=2e-2), r"lr: 0.01 then, 0.02 now"),
    (dict(seq_len=16), r"seq_len: 24 then, 16 now"),
    (dict(columns={1: [2, 4]}), r"value_vectors: \w+ then, \w+ now"),
    (dict(data="other"), r"data: \w+ then, \w+ now"),
])
def test_trainer_resume_checks_every_setting(model_and_bench, killed_training, tmp_path, change, differs):
    data, out = tmp_path / "data.txt", tmp_path / "out"
    shutil.copy(killed_training[0], data)
    shutil.copytree(killed_training[1], out)
    fv = {l: list(range(32)) for l in range(4)}
    change = dict(change)
    sets = change.pop("columns", fv)
    if change.pop("data", None):
        data.write_text(DOCS + "\n\nOne more document.")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    s = small(**{"variant": "fv", **change})
    with pytest.raises(ValueError, match=r"holds a run with other settings or inputs \(.*" + differs):
        train(model_and_bench[0], data, out, s, sets, quiet=True)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # the killed run's folder is untouched
    data.write_text(DOCS)
    train(model_and_bench[0], data, out, small(variant="fv"), fv, quiet=True)  # with its own settings: resumed to the end
    assert (out / "train_settings.json").is_file() and not (out / "trainer_state.json").exists()


def test_trainer_out_never_an_input_nor_a_foreign_folder(model_and_bench, tmp_path, capsys):
    model = copy_model(model_and_bench[0], tmp_path)
    data = tmp_path / "data.txt"
    data.write_text(DOCS)
    before = (model / "model.safetensors").read_bytes()
    argv = ["train", "--model", str(model), "--data", str(data), "--variant", "fv", "--steps", "2", "--quiet"]
    refused(capsys, argv + ["--out", str(model)], r"is \(inside\) the input")
    refused(capsys, argv + ["--out", str(data)], r"is an existing file; give a folder")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused(capsys, argv + ["--out", str(other)], r"holds files minipss did not write here \(notes.txt\)")
    refused(capsys, argv + ["--out", str(tmp_path / "o"), "--steps", "0"], r"--steps: must be 1 or more")
    refused(capsys, argv + ["--out", str(tmp_path / "o"), "--lr", "-1"], r"--lr -1.0: must be a positive number")
    refused(capsys, argv + ["--out", str(tmp_path / "o"), "--seq-len", "5000"], r"--seq-len 5000: the model reads at most 1024")
    assert (model / "model.safetensors").read_bytes() == before and (other / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()


def test_trainer_finished_run_is_not_redone_and_another_is_refused(model_and_bench, tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text(DOCS)
    out = tmp_path / "out"
    argv = ["train", "--model", str(model_and_bench[0]), "--data", str(data), "--out", str(out), "--steps", "2", "--quiet"]
    main(argv + ["--variant", "fv"])
    weights = (out / "model.safetensors").read_bytes()
    main(argv + ["--variant", "fv"])  # the same run again: nothing to do
    assert (out / "model.safetensors").read_bytes() == weights
    refused(capsys, argv + ["--variant", "pv", "--bench", str(model_and_bench[1]), "--concepts", "Concept 1"],
            r"variant: \"fv\" then, \"pv\" now")
    assert (out / "model.safetensors").read_bytes() == weights


def test_trainer_non_utf8_data_names_the_line(model_and_bench, tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_bytes(b"first doc\n\nsecond \xff doc\n")
    refused(capsys, ["train", "--model", str(model_and_bench[0]), "--data", str(data), "--out", str(tmp_path / "o"),
                     "--variant", "fv"], r"d.txt:3: not UTF-8 text")


def test_a_broken_tokenizer_config_is_named(model_and_bench, tmp_path, capsys):
    model, bench = model_and_bench
    copy = copy_model(model, tmp_path)
    (copy / "tokenizer_config.json").write_text("{not json")
    refused(capsys, ["pss", "--model", str(copy), "--bench", str(bench), "--out", str(tmp_path / "r.json"),
                     "--mode", "cloze", "--ratios", "0.1", "--skip-layers", "1", "--quiet"],
            r"tokenizer_config\.json: invalid JSON")
    assert not (tmp_path / "r.json").exists()
