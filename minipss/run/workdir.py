"""Work saved as it goes, so an interrupted run resumes where it stopped: `WorkDir` (`<out>.work/`), or
`Unsaved` for a caller that keeps work in memory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..interrupts import pause_point, writing
from .fingerprint import differences, short


def valid_record(row) -> bool:
    """One saved cell, whole: `{"key": str, "correct": [bool, ...], "run": str}` (the run's short id) and,
    in cloze and logits modes, `"prob"`: p(correct) per question, numbers in [0, 1]."""
    return (isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("run"), str)
            and isinstance(row.get("correct"), list) and all(isinstance(x, bool) for x in row["correct"])
            and valid_prob(row.get("prob")))


def valid_prob(prob) -> bool:
    """A cell's graded outcome, when it has one: probabilities in [0, 1] (a list of the wrong length is a
    stale cell, recomputed by `WorkDir.keep_cells`, like a `correct` of the wrong length)."""
    return prob is None or (isinstance(prob, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in prob))


def read_cells(file: Path, own: bool = True) -> list[dict]:
    """The records of a saved-cells file, each checked by `valid_record`.

    A crash or a kill can leave the end of the file damaged: a last line cut short (no newline) or a tail
    of zero bytes. That tail is dropped with a note naming the file and how much was dropped, and its cells
    are computed again; `own` (the file this process appends to) also cuts it off the file, so the next
    line starts whole. A damaged record anywhere else is refused (ValueError naming the file and line):
    it was not left by an interruption, and it is never used."""
    data = file.read_bytes()
    body = data.rstrip(b"\0")  # a crash can leave zero bytes where the last writes were to go
    end = body.rfind(b"\n") + 1  # past the last whole line
    lines = body[:end].split(b"\n")[:-1]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if not valid_record(row):
            raise ValueError(f"{file}:{n}: a damaged record (not a saved cell) before the end of the file; a damaged "
                             f"record is never used: remove that line (its cell is then computed again), or remove "
                             f"the folder {file.parent} to start over")
        rows.append(row)
    dropped = len(data) - end
    if dropped:
        cut, zeros = len(body) - end, len(data) - len(body)
        what = " and ".join(([f"a last line cut short ({cut} bytes)"] if cut else [])
                            + ([f"{zeros} zero bytes"] if zeros else []))
        print(f"note: {file}: dropped {what} after its last whole record (line {len(rows)}, kept); "
              "what was lost is computed again", file=sys.stderr, flush=True)
        if own:
            with writing(file):
                os.truncate(file, end)
    return rows


def describe(path: Path) -> str:
    """What a work folder holds, in words (for the line a stopped run prints)."""
    cells = sum(f.read_bytes().count(b"\n") for f in path.glob("cells*.jsonl")) if path.is_dir() else 0
    coefficients = path.is_dir() and any(path.glob("*coefficient*.safetensors"))
    if not coefficients and not cells:
        return "nothing yet"
    return f"{'the coefficients and ' if coefficients else ''}{cells} finished cells"


class WorkDir:
    """`<out>.work/`: settings, coefficients (safetensors) and finished cells (JSON lines).

    `settings.json` records what the work was computed from (see `Settings.fingerprint`) and a run with
    anything different is refused. Each cell line and each coefficient file also carries the short id of
    that record, so work from another record (say, after `settings.json` was deleted) is recomputed,
    never reused; so is a truncated coefficient file and a cell of the wrong length. The cells file is read by
    `read_cells`: a damaged tail (a crash or a kill) is dropped and recomputed, damage elsewhere refused."""

    def __init__(self, out: Path, fingerprint: dict, rank: int = 0):
        self.path = out.parent / (out.name + ".work")
        self.path.mkdir(parents=True, exist_ok=True)
        self.run = short(fingerprint)
        stamp = self.path / "settings.json"
        if stamp.exists():
            try:
                saved = json.loads(stamp.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                saved = None
            diff = differences(saved, fingerprint)
            if diff:
                raise ValueError(f"{self.path} holds work made with other settings or inputs ("
                                 + "; ".join(diff) + f"); to start over, remove the folder {self.path}, "
                                 "or choose another --out")
        if rank == 0:
            tmp = stamp.with_name("settings.json.tmp")
            with writing(stamp):
                tmp.write_text(json.dumps(fingerprint, sort_keys=True, indent=1))
                os.replace(tmp, stamp)
        self.rank = rank
        self.cells_file = self.path / ("cells.jsonl" if rank == 0 else f"cells.rank{rank}.jsonl")
        self.cells, self.probs = {}, {}
        for file in sorted(self.path.glob("cells*.jsonl")):  # every shard's, so any split resumes
            for row in read_cells(file, own=file == self.cells_file):
                if row["run"] == self.run:
                    self.cells[row["key"]] = row["correct"]
                    if row.get("prob") is not None:
                        self.probs[row["key"]] = row["prob"]

    def keep_cells(self, expected_length, graded: bool = False) -> None:
        """Drop cells whose list of answers does not have the length this run expects, and with `graded`
        those saved without the graded outcome (both recomputed): a result never mixes cells with and
        without it."""
        self.cells = {k: v for k, v in self.cells.items()
                      if expected_length(k) == len(v) and (len(self.probs.get(k, v)) == len(v))
                      and (k in self.probs or not graded)}
        self.probs = {k: v for k, v in self.probs.items() if k in self.cells}

    def coefficients(self, compute, name: str = "coefficients", shape=None) -> torch.Tensor:
        file = self.path / f"{name}.safetensors"
        if file.exists():
            try:
                with safe_open(str(file), framework="pt") as f:
                    same = (f.metadata() or {}).get("run") == self.run
                    value = f.get_tensor("coefficients") if same else None
            except Exception:  # truncated or damaged: computed again
                value = None
            if value is not None and (shape is None or tuple(value.shape) == tuple(shape)):
                return value
        value = compute()
        if self.rank == 0:
            with writing(file):
                save_file({"coefficients": value.contiguous()}, str(file) + ".tmp", metadata={"run": self.run})
                os.replace(str(file) + ".tmp", file)
            pause_point()
        return value

    def save_cell(self, key: str, correct: list[bool], prob: list[float] | None = None) -> None:
        """One finished cell: per question, right or wrong and, in cloze and logits modes, p(correct)."""
        record = {"key": key, "correct": correct, "run": self.run, **({"prob": prob} if prob is not None else {})}
        line = json.dumps(record) + "\n"
        with writing(self.cells_file), open(self.cells_file, "a") as f:
            f.write(line)  # one whole line per write: a stop between cells leaves whole lines
        self.cells[key] = correct
        if prob is not None:
            self.probs[key] = prob
        pause_point()


class Unsaved:
    """Work kept in memory only, for a caller that saves its own results (the §5 experiment): the part
    of `WorkDir` that `measure` uses."""

    def __init__(self):
        self.cells: dict[str, list[bool]] = {}
        self.probs: dict[str, list[float]] = {}

    def coefficients(self, compute, name: str = "coefficients", shape=None) -> torch.Tensor:
        return compute()

    def save_cell(self, key: str, correct: list[bool], prob: list[float] | None = None) -> None:
        self.cells[key] = correct
        if prob is not None:
            self.probs[key] = prob

    def keep_cells(self, expected_length, graded: bool = False) -> None:
        pass  # nothing saved, nothing stale
