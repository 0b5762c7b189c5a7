"""Every command refuses bad input the way `minipss pss` and `train` do: exit code 2, a message naming the
option, file, line or folder, no traceback, the user's files byte-identical, nothing left at the output. A
folder a command writes is new, empty or its own earlier run with the same settings."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_process import cli_env
from minipss import files
from minipss.cli import main
from minipss.synth.world import make_world
from minipss.weights import real_models
from tiny import make_bench, make_tiny_model

SYNTH = ["--entities", "6"]
PRETRAIN = ["--layers", "1", "--hidden", "16", "--heads", "2", "--steps", "2", "--warmup", "1",
            "--batch-size", "2", "--seq-len", "16", "--log-every", "1", "--checkpoints", "2", "--quiet"]
STUDY_SYNTH = ["--entities", "36", "--seeds", "0", "--sizes", "2x16", "--base", "2x16", "--steps", "2",
               "--per-group", "3", "--ratios", "0.5", "--ft-steps", "1", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The user's files: two tiny models, a benchmark, passages, a synthetic world, a result file."""
    d = tmp_path_factory.mktemp("user")
    e = {"m0": make_tiny_model(d / "m0"), "m1": make_tiny_model(d / "m1", seed=1),
         "bench": make_bench(d / "bench.jsonl", n_concepts=7, n_mcq=2), "world": d / "world",
         "data": d / "passages.jsonl", "result": d / "result.json", "root": d}
    e["data"].write_text("".join(json.dumps({"concept": f"Concept {i}", "text": f"Concept {i} is c{i}."}) + "\n"
                                 for i in range(7)))
    make_world(e["world"], entities=6)
    e["result"].write_text(json.dumps({"acc_before": 0.5, "pss": 0.1, "pss_by_ratio": {"0.5": 0.1}}))
    return e


def files_under(*roots) -> dict:
    out = {}
    for root in map(Path, roots):
        if root.is_file():
            out[root] = root.read_bytes()
        elif root.is_dir():
            out.update({p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()})
    return out


def refused(capsys, argv, pattern, watch=(), new=None):
    """`minipss *argv` exits 2 with `pattern` in its one-line message and no traceback; every file under
    `watch` is byte-identical afterwards and `new` (an output that did not exist) still does not."""
    before = files_under(*watch)
    with pytest.raises(SystemExit) as e:
        main(list(map(str, argv)))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    assert files_under(*watch) == before
    if new is not None:
        assert not Path(new).exists()
        assert not list(Path(new).parent.glob(".*partial")), "a temporary folder was left"
    return err


def foreign(folder: Path) -> Path:
    """A folder of the user's, holding a file of the name the command writes."""
    folder.mkdir()
    (folder / "train.jsonl").write_text("the user's own\n")
    (folder / "study.json").write_text("{}")
    return folder


def user_file(path: Path) -> Path:
    path.write_text("the user's own\n")
    return path


# ------------------------------------------------------------------ synth


@pytest.mark.parametrize("extra, pattern", [
    (["--entities", "5"], r"--entities 5: must be an integer >= 6"),
    (["--entities", "0"], r"--entities 0: must be an integer >= 6"),
    (["--seed", "-1"], r"--seed -1: must be an integer in \[0, 4294967295\]"),
])
def test_synth_options(tmp_path, capsys, extra, pattern):
    refused(capsys, ["synth", "--out", tmp_path / "w", *SYNTH, *extra], pattern, new=tmp_path / "w")


def test_synth_outputs(env, tmp_path, capsys):
    refused(capsys, ["synth", "--out", user_file(tmp_path / "f"), *SYNTH], r"--out .*/f: is an existing file",
            [tmp_path / "f"])
    refused(capsys, ["synth", "--out", tmp_path / "f" / "w", *SYNTH], r"/f is a file, not a folder",
            [tmp_path / "f"], tmp_path / "f" / "w")
    mine = foreign(tmp_path / "mine")
    refused(capsys, ["synth", "--out", mine, *SYNTH],
            r"--out .*/mine: the folder holds files minipss did not write here \(study.json, train.jsonl\)", [mine])
    refused(capsys, ["synth", "--out", env["world"], "--entities", "6", "--seed", "1"],
            r"--out .*/world holds a run with other settings or inputs \(seed: 0 then, 1 now\)", [env["world"]])
    before = files_under(env["world"])  # its own world with the same settings: the same bytes
    main(["synth", "--out", str(env["world"]), *SYNTH])
    assert files_under(env["world"]) == before


def test_an_empty_folder_is_filled_and_a_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    make_world(tmp_path / "empty", entities=6)
    assert (tmp_path / "empty" / "bench.jsonl").is_file()

    def fails(folder):
        (folder / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.new_folder(tmp_path / "out", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# ------------------------------------------------------------------ pretrain


@pytest.mark.parametrize("extra, pattern", [
    (["--hidden", "30", "--heads", "4"], r"--hidden 30 is not a multiple of --heads 4"),
    (["--heads", "0"], r"--heads 0: must be an integer >= 1"),
    (["--layers", "0"], r"--layers 0: must be an integer >= 1"),
    (["--steps", "0"], r"--steps 0: must be an integer >= 1"),
    (["--seq-len", "1"], r"--seq-len 1: must be an integer >= 2"),
    (["--batch-size", "-3"], r"--batch-size -3: must be an integer >= 1"),
    (["--log-every", "0"], r"--log-every 0: must be an integer >= 1"),
    (["--ff", "-1"], r"--ff -1: must be an integer >= 0"),
    (["--lr", "0"], r"--lr 0.0: must be a positive number"),
    (["--lr", "nan"], r"--lr nan: must be a positive number"),
    (["--seed", "-1"], r"--seed -1"),
    (["--checkpoints", "5"], r"--checkpoints 5: must be an integer in \[1, 2\]"),
    (["--checkpoints", "x"], r"--checkpoints 'x': expected comma-separated steps"),
    (["--family", "nope"], r"--family: invalid choice: 'nope'"),
    (["--device", "tpu"], r"--device 'tpu': choose cpu, cuda or cuda:N"),
])
def test_pretrain_options(env, tmp_path, capsys, extra, pattern):
    refused(capsys, ["pretrain", "--world", env["world"], "--out", tmp_path / "run", *PRETRAIN, *extra], pattern,
            [env["world"]], tmp_path / "run")


@pytest.mark.parametrize("name, damage, pattern", [
    ("train.jsonl", None, r"train.jsonl: world file .* not found"),
    ("train.jsonl", '{"text": "a"}\n{"text": 3}\n', r"train.jsonl:2: needs a non-empty string field 'text'"),
    ("train.jsonl", '{"text": "a"}\n{oops\n', r"train.jsonl:2: invalid JSON"),
    ("bench.jsonl", '{"concept": "x"}\n', r"bench.jsonl:1: "),
    ("tokenizer.json", "{}", r"tokenizer.json: not a tokenizer.json written by `minipss synth`"),
])
def test_pretrain_reads_the_world_whole_first(env, tmp_path, capsys, name, damage, pattern):
    world = tmp_path / "world"
    world.mkdir()
    for f in env["world"].iterdir():
        (world / f.name).write_bytes(f.read_bytes())
    (world / name).unlink() if damage is None else (world / name).write_text(damage)
    refused(capsys, ["pretrain", "--world", world, "--out", tmp_path / "run", *PRETRAIN], pattern, [world],
            tmp_path / "run")


def test_pretrain_outputs(env, tmp_path, capsys):
    world = env["world"]
    argv = ["pretrain", "--world", world, *PRETRAIN]
    refused(capsys, argv + ["--out", world], r"--out .*/world: is \(inside\) the input", [world])
    refused(capsys, argv + ["--out", world / "run"], r"is \(inside\) the input", [world], world / "run")
    refused(capsys, argv + ["--out", user_file(tmp_path / "f")], r"is an existing file; give a folder",
            [tmp_path / "f"])
    mine = foreign(tmp_path / "mine")
    refused(capsys, argv + ["--out", mine], r"holds files minipss did not write here \(study.json, train.jsonl\)",
            [mine])
    main(list(map(str, argv + ["--out", tmp_path / "run"])))
    refused(capsys, argv + ["--out", tmp_path / "run", "--lr", "0.01"],
            r"--out .*/run holds a run with other settings or inputs \(lr: 0.003 then, 0.01 now\)",
            [world, tmp_path / "run"])
    before = files_under(tmp_path / "run")  # the same settings again: nothing to do
    main(list(map(str, argv + ["--out", tmp_path / "run"])))
    assert files_under(tmp_path / "run") == before


# ------------------------------------------------------------------ study-synth


@pytest.mark.parametrize("extra, pattern", [
    (["--entities", "5"], r"--entities 5: must be an integer >= 6"),
    (["--entities", "30"], r"--entities 30: the fine-tuning study needs 12 or more low-tier entities"),
    (["--preset", "huge"], r"argument --preset: invalid choice: 'huge'"),
    (["--per-group", "2"], r"--per-group 2: must be an integer in \[3, 6\]"),
    (["--null-seeds", "-1"], r"--null-seeds -1: must be an integer >= 0"),
    (["--calibration-draws", "0"], r"--calibration-draws 0: must be an integer >= 1"),
    (["--unrelated", "kind"], r"argument --unrelated: invalid choice: 'kind'"),
    (["--ft-seeds", ","], r"--ft-seeds: give at least one seed"),
    (["--seeds", ","], r"--seeds: give at least one seed"),
    (["--seeds", "0,-1"], r"--seeds -1"),
    (["--sizes", "2x"], r"--sizes: '2x' is not LAYERSxHIDDEN"),
    (["--sizes", "0x16"], r"--sizes 0x16: layers 0: must be an integer >= 1"),
    (["--sizes", "2x97"], r"--sizes 2x97: hidden 97 is not a multiple of its heads 3"),
    (["--base", "3x1x2"], r"--base: '3x1x2' is not LAYERSxHIDDEN"),
    (["--skip-layers", "2"], r"--skip-layers 2 leaves nothing to mask in a model of 2 layers \(--sizes 2x16\)"),
    (["--studies", "size,nope"], r"--studies: unknown 'nope'; choose among emergence, size"),
    (["--family", "nope"], r"--family 'nope': choose one of"),
    (["--steps", "0"], r"--steps 0: must be an integer >= 1"),
    (["--ft-lrs", "0.001,0"], r"--ft-lrs 0.0: must be a positive number"),
    (["--ratios", "0.5,2"], r"--ratios: 2.0 is outside \[0, 1\]"),
    (["--threads", "-1"], r"--threads -1: must be an integer >= 0"),
    (["--pss-seed", "-1"], r"--pss-seed -1"),
])
def test_study_synth_options(tmp_path, capsys, extra, pattern):
    refused(capsys, ["study-synth", "--out", tmp_path / "s", *STUDY_SYNTH, *extra], pattern, new=tmp_path / "s")


def test_study_synth_outputs(env, tmp_path, capsys):
    refused(capsys, ["study-synth", "--out", user_file(tmp_path / "f"), *STUDY_SYNTH], r"is an existing file",
            [tmp_path / "f"])
    mine = foreign(tmp_path / "mine")
    refused(capsys, ["study-synth", "--out", mine, *STUDY_SYNTH], r"holds files minipss did not write here", [mine])
    # a synthetic world is not a study's folder
    refused(capsys, ["study-synth", "--out", env["world"], *STUDY_SYNTH],
            r"holds a run with other settings or inputs \(.*command: \"synth\" then, \"study-synth\" now",
            [env["world"]])


# ------------------------------------------------------------------ study


def study_argv(env, out, *extra):
    return ["study", "--models", f"{env['m0']},{env['m1']}", "--bench", env["bench"], "--out", out,
            "--ratios", "0.5", "--concepts", "0", "--dtype", "float32", "--bootstrap", "20", "--skip-layers", "1",
            "--quiet", *extra]


@pytest.mark.parametrize("extra, pattern", [
    (["--concepts", "3"], r"--concepts 3: must be an integer >= 6"),
    (["--skip-layers", "-1"], r"--skip-layers -1: must be an integer >= 0"),
    (["--batch-size", "0"], r"--batch-size 0: must be an integer >= 1"),
    (["--bootstrap", "0"], r"--bootstrap 0: must be an integer >= 1"),
    (["--seed", "-1"], r"--seed -1"),
    (["--ratios", "0.5,0.5"], r"--ratios: \[0.5, 0.5\] lists a ratio twice"),
    (["--device", "tpu"], r"--device 'tpu'"),
])
def test_study_options(env, tmp_path, capsys, extra, pattern):
    refused(capsys, study_argv(env, tmp_path / "o", *extra), pattern, [env["root"]], tmp_path / "o")


def test_study_inputs_and_outputs(env, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(env["bench"].read_text().replace('"answer": "B"', '"answer": "E"', 1))
    argv = study_argv(env, tmp_path / "o")
    refused(capsys, argv[:4] + [bad] + argv[5:], r"bad.jsonl:\d+: .*answer", [bad], tmp_path / "o")
    refused(capsys, argv[:4] + [tmp_path / "none.jsonl"] + argv[5:], r"none.jsonl: benchmark not found",
            new=tmp_path / "o")
    refused(capsys, study_argv(env, env["bench"]), r"--out .*bench.jsonl: is an existing file", [env["root"]])
    refused(capsys, study_argv(env, env["m0"] / "study"), r"is \(inside\) the input .*m0", [env["root"]],
            env["m0"] / "study")
    mine = foreign(tmp_path / "mine")
    refused(capsys, study_argv(env, mine), r"holds files minipss did not write here", [mine, env["root"]])
    twin = make_tiny_model(tmp_path / "x" / "m0")
    refused(capsys, ["study", "--models", f"{env['m0']},{twin}", "--bench", env["bench"], "--out", tmp_path / "o"],
            r"two models would share the result folder .*/o/m0", [env["root"]], tmp_path / "o")
    main(list(map(str, argv)))
    refused(capsys, study_argv(env, tmp_path / "o", "--seed", "1"),
            r"holds a run with other settings or inputs \(seed: 0 then, 1 now\)", [tmp_path / "o", env["root"]])


# ------------------------------------------------------------------ compare


def test_compare_inputs_and_outputs(env, tmp_path, capsys):
    result = env["result"]
    other = tmp_path / "other.json"
    other.write_text('{"pss": 1}')
    refused(capsys, ["compare", tmp_path / "none.json"], r"none.json: no such result file")
    refused(capsys, ["compare", result, other], r"other.json: not a minipss result \(missing acc_before",
            [other, result])
    # --plots checks for matplotlib before its folder (so a missing library is said first)
    pytest.importorskip("matplotlib", reason='--plots needs matplotlib: pip install "minipss[plot]"')
    refused(capsys, ["compare", result, "--plots", result], r"--plots .*result.json: is an existing file", [result])
    refused(capsys, ["compare", result, "--plots", env["root"]], r"--plots .*: holds the input .*result.json",
            [env["root"]])
    mine = foreign(tmp_path / "mine")
    refused(capsys, ["compare", result, "--plots", mine], r"holds files minipss did not write here", [mine])
    main(["compare", str(result), "--plots", str(tmp_path / "figs")])
    main(["compare", str(result), str(result), "--plots", str(tmp_path / "figs")])  # its own figures, made again
    assert (tmp_path / "figs" / "fig2_accuracy_vs_pss.png").is_file()


# ------------------------------------------------------------------ experiment


def experiment_argv(env, out, *extra):
    return ["experiment", "--model", env["m0"], "--out", out, "--bench", env["bench"], "--data", env["data"],
            "--steps", "1", "--samples", "2", "--open-tokens", "2", "--skip-layers", "1", "--ratios", "0.2",
            "--quiet", *extra]


@pytest.mark.parametrize("extra, pattern", [
    (["--steps", "0"], r"--steps 0: must be an integer >= 1"),
    (["--lr", "-1"], r"--lr -1.0: must be a positive number"),
    (["--batch-size", "0"], r"--batch-size 0: must be an integer >= 1"),
    (["--seq-len", "5000"], r"--seq-len 5000: the model reads at most 1024"),
    (["--ratios", "2"], r"--ratios: 2.0 is outside \[0, 1\]"),
    (["--skip-layers", "4"], r"--skip-layers 4 leaves nothing to mask in a model of 4 layers"),
    (["--samples", "0"], r"--samples 0: must be an integer >= 1"),
    (["--open-tokens", "0"], r"--open-tokens 0: must be an integer >= 1"),
    (["--seed", "-1"], r"--seed -1"),
    (["--concepts", "Concept 0;Nobody"], r"--concepts: .*bench.jsonl has no concept named 'Nobody'"),
    (["--concepts", "Concept 0;Concept 1;Concept 0"], r"at least 6 different concepts .* got 2"),
])
def test_experiment_options(env, tmp_path, capsys, extra, pattern):
    refused(capsys, experiment_argv(env, tmp_path / "o", *extra), pattern, [env["root"]], tmp_path / "o")


def test_experiment_inputs_and_outputs(env, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"concept": "Concept 0", "text": "a"}\n{"text": "b"}\n')
    argv = experiment_argv(env, tmp_path / "o")
    at = argv.index("--data") + 1
    refused(capsys, argv[:at] + [data] + argv[at + 1:], r"data.jsonl:2: needs a non-empty string field 'concept'",
            [data], tmp_path / "o")
    data.write_text('{"concept": "Concept 0", "text": "a"}\nnot json\n')
    refused(capsys, argv[:at] + [data] + argv[at + 1:], r"data.jsonl:2: invalid JSON", [data], tmp_path / "o")
    refused(capsys, argv[:at] + [tmp_path / "none.jsonl"] + argv[at + 1:], r"none.jsonl: passages file not found",
            new=tmp_path / "o")
    refused(capsys, ["experiment", "--model", tmp_path, *argv[3:]], r"--model .*: not a model folder",
            new=tmp_path / "o")
    refused(capsys, experiment_argv(env, env["data"]), r"is an existing file; give a folder", [env["root"]])
    refused(capsys, experiment_argv(env, env["m0"] / "exp"), r"is \(inside\) the input", [env["root"]],
            env["m0"] / "exp")
    mine = foreign(tmp_path / "mine")
    refused(capsys, experiment_argv(env, mine), r"holds files minipss did not write here", [mine, env["root"]])


# ------------------------------------------------------------------ perf


def perf_argv(env, *extra):
    return ["perf", "--model", env["m0"], "--no-reference", "--concepts", "1", "--ratios", "0.5",
            "--skip-layers", "1", *extra]


@pytest.mark.parametrize("extra, pattern", [
    (["--concepts", "0"], r"--concepts 0: must be an integer in \[1, \d+\]"),
    (["--concepts", "3", "--end-to-end"], r"--concepts 3: must be an integer in \[6, \d+\]"),
    (["--ratios", "0.5,-1"], r"--ratios: -1.0 is outside \[0, 1\]"),
    (["--skip-layers", "4"], r"--skip-layers 4 leaves nothing to mask"),
    (["--batch-size", "0"], r"--batch-size 0: must be an integer >= 1"),
    (["--repeats", "0"], r"--repeats 0: must be an integer >= 1"),
    (["--modes", "logits,nope"], r"--modes: unknown 'nope'"),
    (["--config", "no-such-config"], r"no-such-config: --config .* not found"),
    (["--device", "tpu"], r"--device 'tpu'"),
])
def test_perf_options(env, capsys, extra, pattern):
    refused(capsys, perf_argv(env, *extra), pattern, [env["root"]])


def test_perf_inputs_and_outputs(env, tmp_path, capsys):
    refused(capsys, ["perf", "--model", tmp_path, "--no-reference"], r"--model .*: not a model folder")
    refused(capsys, perf_argv(env, "--bench", tmp_path / "none.jsonl"), r"none.jsonl: benchmark not found")
    refused(capsys, perf_argv(env, "--bench", env["bench"], "--json", env["bench"]),
            r"--json .*bench.jsonl: would write over the input",
            [env["root"]])
    refused(capsys, perf_argv(env, "--json", env["m0"] / "config.json"), r"would write over the input",
            [env["root"]])
    refused(capsys, perf_argv(env, "--json", tmp_path), r"--json .*: is an existing folder; give a file path")


# ------------------------------------------------------------------ quickstart, weights


def test_quickstart_checks_out_before_converting(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.json").mkdir()
    refused(capsys, ["quickstart", "--out", tmp_path / "r.json"], r"r.json is an existing folder; give a file path",
            [tmp_path])
    refused(capsys, ["quickstart", "--out", tmp_path / "r.csv"], r"does not end in .csv", [tmp_path])
    (tmp_path / "fig3_pss_by_ratio.png").write_bytes(b"mine")
    refused(capsys, ["quickstart", "--out", tmp_path / "q.json"],
            r"holds fig3_pss_by_ratio.png, which quickstart would replace", [tmp_path])
    assert not (tmp_path / "weights").exists()  # nothing converted


def weights_refused(capsys, argv, pattern, watch):
    before = files_under(*watch)
    assert real_models.main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err) and "Traceback" not in err, err
    assert files_under(*watch) == before


def test_weights_output_is_checked_before_any_work(tmp_path, capsys):
    weights_refused(capsys, ["gemma-3-270m", "--out", user_file(tmp_path / "f")],
                    r"error: --out .*/f: is an existing file; give a folder", [tmp_path])
    weights_refused(capsys, ["gemma-3-270m", "--out", tmp_path / "f" / "g"], r"/f is a file, not a folder", [tmp_path])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    weights_refused(capsys, ["gemma-3-270m", "--out", mine],
                    r"--out .*/mine: the folder holds files minipss did not write here \(config.json\)", [tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "mine"]  # no GGUF copy, no partial folder


def test_weights_as_a_process_refuses_without_a_traceback(tmp_path):
    user_file(tmp_path / "f")
    done = subprocess.run([sys.executable, "-m", "minipss.weights",
                           "gemma-3-270m", "--out", str(tmp_path / "f")],
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is an existing file" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "f").read_text() == "the user's own\n"
