"""What several test files build alike: training text, benchmarks with one malformed line, sharded copies
of a checkpoint, a training run killed mid-way, and result files compared without their timings."""

import json
import shutil

from safetensors.torch import load_file, save_file

from cli_process import kill_when


def training_text(n_docs: int = 12) -> str:
    """Documents about the tiny benchmark's concepts (`tiny.make_bench`), blank-line separated."""
    return "\n\n".join(f"Concept {i} is known for fact number {i * 7}, said the record." for i in range(n_docs))


class Near(float):
    """A number that equals any other within 1e-4."""

    def __eq__(self, other):
        return isinstance(other, (int, float)) and abs(float(self) - float(other)) <= 1e-4

    __hash__ = float.__hash__


def graded_near(value, graded: bool = False):
    """`value` with every number under a graded-outcome key (`prob...`, and a `verdict` made on p(correct))
    made `Near`: p(correct) comes from option scores whose fp32 sums depend on the batch a question was
    scored in, so a resumed or split run agrees with an uninterrupted one to about 1e-5 there (fp32 log-prob
    sums), and exactly everywhere else."""
    if isinstance(value, dict):
        return {k: graded_near(v, graded or k.startswith("prob") or (
            k == "verdict" and isinstance(v, dict) and v.get("measure") == "prob_excess_drop")) for k, v in value.items()}
    if isinstance(value, list):
        return [graded_near(v, graded) for v in value]
    return Near(value) if graded and isinstance(value, float) else value


def strip_timing(result: dict) -> dict:
    """A result file's content without its wall-clock timings (which differ between equal runs), its
    graded-outcome numbers compared within 1e-4 (`graded_near`)."""
    return graded_near({k: v for k, v in result.items() if k != "timing_s"})


# A well-formed benchmark line; tests change one field of it
GOOD_CONCEPT = {"concept": "X", "tier": "high", "category": "c",
                "mcq": [{"question": "q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "A"}]}


def bench_with_line(path, line, at: int, n_good: int = 6):
    """A benchmark of `n_good` good concepts (C0, C1, ...) with `line` (a dict, or raw text) inserted as
    line `at + 1`; returns the path."""
    rows = [json.dumps({**GOOD_CONCEPT, "concept": f"C{i}"}) for i in range(n_good)]
    rows.insert(at, line if isinstance(line, str) else json.dumps(line))
    path.write_text("\n".join(rows) + "\n")
    return path


def copy_model(folder, tmp_path):
    """A copy of a model folder to change (tmp_path/m)."""
    dst = tmp_path / "m"
    shutil.copytree(folder, dst)
    return dst


def shard_checkpoint(folder) -> list:
    """Split `folder/model.safetensors` into two shards with an index (as the hub stores large models) and
    remove the single file; returns the shard paths."""
    state = load_file(folder / "model.safetensors")
    names = sorted(state)
    half = len(names) // 2
    shards = [folder / f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    save_file({k: state[k] for k in names[:half]}, shards[0])
    save_file({k: state[k] for k in names[half:]}, shards[1])
    index = {"weight_map": {k: shards[i >= half].name for i, k in enumerate(names)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors").unlink()
    return shards


# `minipss train` settings long enough to be killed after a checkpoint: 100 steps, one every 10
KILLABLE_TRAINING = ["--variant", "fv", "--steps", "100", "--save-every", "10", "--lr", "1e-2", "--batch-size", "3",
                     "--seq-len", "24", "--warmup", "1"]


def train_args(model, data, out) -> list:
    return ["train", "--model", model, "--data", data, "--out", out, *KILLABLE_TRAINING]


def kill_training_after_first_checkpoint(model, data, out) -> None:
    """Run `minipss train` with `KILLABLE_TRAINING` as a process and kill it as soon as its first
    checkpoint is complete (the resume state is written last); the run is then unfinished."""
    kill_when(lambda: (out / "trainer_state.json").is_file(), *train_args(model, data, out), "--quiet")
    assert not (out / "train_settings.json").exists() and (out / "trainer_state.json").is_file()
