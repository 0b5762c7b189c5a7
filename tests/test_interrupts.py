"""How real runs end, for every long command: killed (SIGKILL), Ctrl-C (SIGINT to the process group), a
scheduler's SIGTERM, a second run on the same output, a damaged tail of the saved cells, a full disk. Each
stop prints one line naming what was saved and the command that resumes (130 for SIGINT, 143 for SIGTERM,
no traceback); a second run is refused naming the live one's process id; and the same command run again
gives what an uninterrupted run gives (result files equal but for timings and paths, weights bit for bit:
one thread on a CPU, as every process here)."""

import builtins
import errno
import io
import json
import os
import re
import shlex
import shutil
import signal
import sys

import pytest
import torch

from builders import graded_near, train_args, training_text
from cli_process import Paused, command
from minipss import interrupts, lock
from minipss.cli import main
from minipss.run.workdir import read_cells
from tiny import make_bench, make_tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs compute as the one-thread processes do, so their weights compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    models = [make_tiny_model(d / f"m{i}", seed=i) for i in range(2)]
    bench = make_bench(d / "bench.jsonl", n_concepts=7, n_mcq=2)
    text = d / "data.txt"
    text.write_text(training_text())
    passages = d / "passages.jsonl"
    passages.write_text("".join(json.dumps({"concept": f"Concept {i}", "text": f"Concept {i} is c{i}."}) + "\n"
                                for i in range(7)))
    return {"model": models[0], "models": models, "bench": bench, "text": text, "passages": passages, "dir": d}


def cli(capsys, argv) -> tuple[int, str]:
    """`minipss *argv` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def comparable(path, *folders):
    """A JSON file's content with wall-clock times left out and the run's own folders named alike."""
    text = path.read_text()
    for folder in folders:
        text = text.replace(str(folder), "OUT")

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("timing_s", "seconds", "seconds_by_part")}
        return [strip(v) for v in x] if isinstance(x, list) else x
    content = strip(json.loads(text)) if path.suffix == ".json" else [strip(json.loads(l)) for l in text.splitlines()]
    return graded_near(content)  # p(correct) agrees to fp32 summation order (builders.graded_near)


def same_files(a, b, names):
    """Every named file of folder `a` equals the one in `b`: JSON (and JSON lines) as `comparable`, other
    files byte for byte."""
    for name in names:
        if name.endswith((".json", ".jsonl")):
            assert comparable(a / name, a) == comparable(b / name, b), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def stopped_three_ways(tmp_path, cmd, name, twin, out, left=lambda: None):
    """Run `cmd` three times, each stopped right after its first newly saved piece of work: SIGKILL, then
    SIGINT, then SIGTERM to its process group. While the second is paused, `twin()` (a second run given the
    same output, returning (exit code, stderr)) must be refused at once naming its process id; the second
    takes over the lock the killed one left, with a note. `left()` checks what each stop left."""
    first = Paused(cmd, tmp_path / "paused")
    code, _ = first.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert lock.lock_path(out).exists()  # a killed run cannot release its lock
    left()
    for sig, expected in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        run = Paused(cmd, tmp_path / "paused")
        if sig == signal.SIGINT:
            twin_code, twin_err = twin()
            assert twin_code == 2 and f"pid {run.pid}, since " in twin_err, twin_err
            assert "Traceback" not in twin_err
        code, err = run.stop(sig)
        assert code == expected, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        if sig == signal.SIGINT:
            assert re.search(rf"note: .*lock: the run that held .* \(pid {first.pid}, since .*\) ended without "
                             r"releasing it; this run takes over", err), err
        lines = [l for l in err.splitlines() if "stopped by" in l]
        print(lines)  # shown when a test fails, or with -s
        assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-3000:]
        assert re.match(rf"{re.escape(name)}: stopped by {signal.Signals(sig).name}\b.*; saved in .+: .+; "
                        r"to resume: ", lines[0]), lines[0]
        assert lines[0].endswith(shlex.join(map(str, resume_words(cmd)))), lines[0]
        assert not lock.lock_path(out).exists()  # released
        left()


def resume_words(cmd):
    """What a stopped run prints as the command that resumes it: the same words."""
    if cmd[1:3] == ["-m", "minipss"]:
        return ["python", "-m", "minipss", *cmd[3:]]
    return ["python", "-m", "minipss.weights", *cmd[WEIGHTS_ARGV_AT:]]


# ------------------------------------------------------------------ the long commands, stopped three ways


def pss_argv(inputs, out, command="pss"):
    ratios = "0.1,0.3,0.5" if command == "pss" else "0.1,0.5"
    return [command, "--model", inputs["model"], "--bench", inputs["bench"], "--out", out, "--mode", "cloze",
            "--ratios", ratios, "--skip-layers", "1", "--quiet"] + (["--control"] if command == "pss" else [])


# about 25 s each on a shared 2-core machine (three processes started and stopped, two runs in this one): pss,
# train and the conversion run by default, the others are `slow`
@pytest.mark.parametrize("name", ["pss", pytest.param("sweep", marks=pytest.mark.slow)])
def test_pss_and_sweep_stopped_every_way_resume_to_the_uninterrupted_result(inputs, tmp_path, capsys, name):
    ref, out = tmp_path / "ref" / "r.json", tmp_path / "run" / "r.json"
    assert cli(capsys, pss_argv(inputs, ref, name))[0] == 0
    argv = pss_argv(inputs, out, name)

    def no_result():
        assert not out.exists() and not out.with_suffix(".csv").exists()
    stopped_three_ways(tmp_path, command(*argv), f"minipss {name}", lambda: cli(capsys, argv), out, no_result)
    assert cli(capsys, argv)[0] == 0
    assert comparable(out) == comparable(ref)
    assert out.with_suffix(".csv").read_text() == ref.with_suffix(".csv").read_text()


def test_train_stopped_every_way_resumes_to_bit_identical_weights(inputs, tmp_path, capsys):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli(capsys, train_args(inputs["model"], inputs["text"], ref) + ["--quiet"])[0] == 0
    argv = [str(a) for a in train_args(inputs["model"], inputs["text"], out)] + ["--quiet"]
    stopped_three_ways(tmp_path, command(*argv), "minipss train", lambda: cli(capsys, argv), out)
    assert cli(capsys, argv)[0] == 0
    same_files(out, ref, ["model.safetensors", "value_vectors.json", "train_settings.json", "config.json"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from minipss.synth.world import make_world

    folder = tmp_path_factory.mktemp("world") / "w"
    make_world(folder, entities=12, seed=3)
    return folder


@pytest.mark.slow
def test_pretrain_stopped_every_way_resumes_to_bit_identical_checkpoints(world, tmp_path, capsys):
    def argv(out):
        return ["pretrain", "--world", str(world), "--out", str(out), "--layers", "2", "--hidden", "32", "--heads", "2",
                "--steps", "24", "--warmup", "3", "--batch-size", "8", "--seq-len", "64", "--checkpoints",
                "4,8,12,16,20,24", "--log-every", "4", "--quiet"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli(capsys, argv(ref))[0] == 0
    stopped_three_ways(tmp_path, command(*argv(out)), "minipss pretrain", lambda: cli(capsys, argv(out)), out)
    assert cli(capsys, argv(out))[0] == 0
    same_files(out, ref, [f"step-{s:06d}/model.safetensors" for s in (4, 8, 12, 16, 20, 24)]
               + ["log.jsonl", "last/optimizer.safetensors", "last/trainer_state.json"])


@pytest.mark.slow
def test_study_synth_stopped_every_way_resumes_to_the_uninterrupted_study(tmp_path, capsys):
    def argv(out):
        return ["study-synth", "--out", str(out), "--preset", "quick", "--entities", "36", "--seeds", "0",
                "--sizes", "2x16", "--base", "2x16", "--steps", "8", "--per-group", "3", "--ratios", "0.5",
                "--studies", "frequency", "--threads", "1", "--quiet"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli(capsys, argv(ref))[0] == 0
    stopped_three_ways(tmp_path, command(*argv(out)), "minipss study-synth", lambda: cli(capsys, argv(out)), out)
    assert cli(capsys, argv(out))[0] == 0
    assert comparable(out / "study.json", out) == comparable(ref / "study.json", ref)
    same_files(out, ref, ["models/2x16-s0/step-000008/model.safetensors", "pss/2x16-s0-step8.json"])


@pytest.mark.slow
def test_study_stopped_every_way_resumes_to_the_uninterrupted_report(inputs, tmp_path, capsys):
    def argv(out):
        return ["study", "--models", ",".join(map(str, inputs["models"])), "--bench", str(inputs["bench"]),
                "--out", str(out), "--ratios", "0.1,0.5", "--concepts", "0", "--dtype", "float32",
                "--bootstrap", "50", "--skip-layers", "1", "--quiet"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli(capsys, argv(ref))[0] == 0
    stopped_three_ways(tmp_path, command(*argv(out)), "minipss study", lambda: cli(capsys, argv(out)), out)
    assert cli(capsys, argv(out))[0] == 0
    same_files(out, ref, ["study.json", "m0/result.json", "m1/result.json"])


@pytest.mark.slow
def test_experiment_stopped_every_way_resumes_to_the_uninterrupted_table(inputs, tmp_path, capsys):
    def argv(out):
        return ["experiment", "--model", str(inputs["model"]), "--out", str(out), "--bench", str(inputs["bench"]),
                "--data", str(inputs["passages"]), "--concepts", ";".join(f"Concept {i}" for i in range(7)),
                "--steps", "2", "--samples", "2", "--open-tokens", "3", "--skip-layers", "1", "--ratios", "0.2",
                "--quiet"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli(capsys, argv(ref))[0] == 0
    stopped_three_ways(tmp_path, command(*argv(out)), "minipss experiment", lambda: cli(capsys, argv(out)), out)
    assert cli(capsys, argv(out))[0] == 0
    same_files(out, ref, ["table.json", "eval-FT-RV/pss.json"] + [f"{v}/model.safetensors" for v in ("fv", "pv", "cv", "rv")])


# the weights conversion, run as `python -m minipss.weights` does, with a small GGUF in fake installed packages
WEIGHTS_RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from minipss.weights.real_models import MODELS, RealModel, main
spec = json.loads(sys.argv[2])
MODELS[spec["name"]] = RealModel(**{**spec, "parts": tuple(map(tuple, spec["parts"]))})
sys.exit(main(sys.argv[3:]))
"""
WEIGHTS_ARGV_AT = 5  # [python, -c, RUNNER, site, spec, *argv]


def test_a_conversion_stopped_every_way_leaves_nothing_at_out_and_resumes(tmp_path, monkeypatch, capsys):
    from dataclasses import asdict

    from gguf_files import hf_model, install_fake_package, vocab_size, write_gguf
    from minipss.weights import real_models

    pytest.importorskip("gguf")
    gguf_path = write_gguf(tmp_path / "tiny.gguf", "llama", hf_model("llama", vocab_size("gpt2")), "gpt2")
    (tmp_path / "site").mkdir()
    model = install_fake_package(tmp_path / "site", gguf_path, "tiny-llama", "llama", 2, monkeypatch)
    ref, out = tmp_path / "ref" / "tiny", tmp_path / "run" / "tiny"
    assert real_models.main(["tiny-llama", "--out", str(ref)]) == 0

    def twin():
        capsys.readouterr()
        return real_models.main(["tiny-llama", "--out", str(out)]), capsys.readouterr().err

    def nothing_at_out():
        assert not out.exists()

    cmd = [sys.executable, "-c", WEIGHTS_RUNNER, str(tmp_path / "site"), json.dumps(asdict(model)),
           "tiny-llama", "--out", str(out)]
    stopped_three_ways(tmp_path, cmd, "python -m minipss.weights", twin, out, left=nothing_at_out)
    assert real_models.main(["tiny-llama", "--out", str(out)]) == 0
    assert not list(out.parent.glob(".tiny.*.partial"))  # the killed run's temporary folder is gone too
    same_files(out, ref, ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])


# ------------------------------------------------------------------ twins


def test_a_live_holder_refuses_a_second_run_and_a_dead_one_is_taken_over(tmp_path, capsys):
    out = tmp_path / "r.json"
    with lock.hold(out):
        with lock.hold(out):  # the same process may take it again
            pass
        assert lock.lock_path(out).exists()
        info = json.loads(lock.lock_path(out).read_text())
        assert info["pid"] == os.getpid() and info["since"]
    assert not lock.lock_path(out).exists()
    lock.lock_path(out).write_text(json.dumps({"pid": 999999, "since": "2000-01-01 00:00:00"}))  # a killed run's
    with lock.hold(out):
        assert "the run that held" in capsys.readouterr().err
    assert not lock.lock_path(out).exists()


# ------------------------------------------------------------------ damaged saved cells


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    """(argv for an output, the uninterrupted result's content, its saved cells file's lines)."""
    d = tmp_path_factory.mktemp("finished")

    def argv(out):
        return [str(a) for a in pss_argv(inputs, out)]
    main(argv(d / "r.json"))
    return argv, comparable(d / "r.json"), d / "r.json.work"


def saved_work(finished, tmp_path, tail: bytes, keep: int = 10):
    """A copy of the finished run's work folder holding its first `keep` saved cells, then `tail`."""
    argv, _, work = finished
    shutil.copytree(work, tmp_path / "r.json.work")
    cells = tmp_path / "r.json.work" / "cells.jsonl"
    lines = cells.read_bytes().splitlines(keepends=True)
    cells.write_bytes(b"".join(lines[:keep]) + tail)
    return tmp_path / "r.json", cells, lines


@pytest.mark.parametrize("tail, dropped", [
    (b'{"key": "located|3|0.1", "corr', r"a last line cut short \(30 bytes\)"),
    (b"\0" * 700, r"700 zero bytes"),
    (b'{"key": "located|3|0.1", "correct": [tr' + b"\0" * 300, r"a last line cut short \(39 bytes\) and 300 zero bytes"),
])
def test_a_damaged_tail_is_dropped_with_a_note_and_recomputed(finished, tmp_path, capsys, tail, dropped):
    argv, whole, _ = finished
    out, cells, lines = saved_work(finished, tmp_path, tail)
    code, err = cli(capsys, argv(out))
    assert code == 0, err
    assert re.search(rf"note: {re.escape(str(cells))}: dropped {dropped} after its last whole record \(line 10", err), err
    assert comparable(out) == whole
    assert len(read_cells(cells)) == len(lines)  # the damaged tail cut off the file: every line whole


@pytest.mark.parametrize("line", [b'{"key": 5, "correct": "yes"\n', b'["not", "a", "cell"]\n', b"\0" * 20 + b"\n",
                                  b'{"key": "baseline|0", "correct": [1, 0], "run": "x"}\n'])
def test_a_damaged_record_before_the_end_stops_the_run_naming_the_line(finished, tmp_path, capsys, line):
    argv = finished[0]
    out, cells, lines = saved_work(finished, tmp_path, b"")
    cells.write_bytes(b"".join(lines[:10]) + line + b"".join(lines[10:12]))
    before = cells.read_bytes()
    code, err = cli(capsys, argv(out))
    assert code == 2 and f"{cells}:11: a damaged record" in err and "Traceback" not in err, err
    assert cells.read_bytes() == before and not out.exists()


# ------------------------------------------------------------------ a full disk


def disk_full(monkeypatch, folder, after: int = 0, name: str = ""):
    """From the (after+1)-th file opened for writing under `folder` whose name ends in `name`, writing fails
    as on a full disk: the file opens, each write raises ENOSPC (no file name, as the system's error has)."""
    real, opened = io.open, [0]

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, *_):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *_):
            self.f.close()

        def __getattr__(self, key):
            return getattr(self.f, key)

    def fake(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if set(mode) & set("wax") and str(file).startswith(str(folder)) and str(file).endswith(name):
            opened[0] += 1
            if opened[0] > after:
                return Full(f)
        return f
    monkeypatch.setattr(io, "open", fake)
    monkeypatch.setattr(builtins, "open", fake)


@pytest.mark.parametrize("after, name, failed", [(5, "cells.jsonl", "r.json.work/cells.jsonl"),
                                                 (0, "r.json.tmp", "r.json")])
def test_a_full_disk_stops_cleanly_and_the_same_command_resumes(finished, tmp_path, capsys, monkeypatch,
                                                                 after, name, failed):
    argv, whole, _ = finished
    out = tmp_path / "r.json"
    disk_full(monkeypatch, tmp_path, after, name)
    code, err = cli(capsys, argv(out))
    monkeypatch.undo()  # space freed
    assert code == 2 and "Traceback" not in err, err
    assert f"cannot write {tmp_path / failed}: No space left on device" in err, err
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not lock.lock_path(out).exists()
    read_cells(tmp_path / "r.json.work" / "cells.jsonl")  # what was saved is whole
    assert cli(capsys, argv(out))[0] == 0
    assert comparable(out) == whole


def test_a_stop_line_names_what_was_saved_and_the_command():
    with interrupts.stop_cleanly("minipss pss", ["minipss", "pss", "--out", "a b.json"]):
        assert interrupts.stop_line("minipss pss", ["minipss", "pss"], signal.SIGTERM).endswith(
            "nothing was saved yet; to start again: minipss pss")
        interrupts.saved("a b.json.work", lambda: "3 finished cells")
        interrupts.saved("elsewhere", "a step's own")  # the command's declaration is kept
        assert interrupts.stop_line("minipss pss", ["minipss", "pss", "--out", "a b.json"], signal.SIGINT) == (
            "minipss pss: stopped by SIGINT (Ctrl-C); saved in a b.json.work: 3 finished cells; "
            "to resume: minipss pss --out 'a b.json'")


def test_a_checkpoint_the_disk_refuses_stops_cleanly_and_training_resumes_to_the_same_weights(
        inputs, tmp_path, capsys, monkeypatch):
    from minipss.run import trainer

    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli(capsys, train_args(inputs["model"], inputs["text"], ref) + ["--quiet"])[0] == 0
    real, calls = trainer.save_file, [0]

    def second_checkpoint_fails(*args, **kwargs):  # the weights of the step-20 checkpoint: the disk is full
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer, "save_file", second_checkpoint_fails)
    code, err = cli(capsys, train_args(inputs["model"], inputs["text"], out) + ["--quiet"])
    monkeypatch.undo()  # space freed
    assert code == 2 and f"cannot write {out}: No space left on device" in err and "Traceback" not in err, err
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 10  # the saved checkpoint, intact
    assert not (tmp_path / ".run.partial").exists() and not lock.lock_path(out).exists()
    assert cli(capsys, train_args(inputs["model"], inputs["text"], out) + ["--quiet"])[0] == 0
    same_files(out, ref, ["model.safetensors", "value_vectors.json", "train_settings.json"])
