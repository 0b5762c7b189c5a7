"""Work saved as it goes, so an interrupted run resumes where it stopped: `WorkDir` (`<out>.work/`), or
`Unsaved` for a caller that keeps work in memory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .fingerprint import differences, short


def valid_prob(prob, n: int) -> bool:
    """A cell's graded outcome, when it has one: n probabilities in [0, 1]."""
    return prob is None or (isinstance(prob, list) and len(prob) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in prob))


class WorkDir:
    """`<out>.work/`: settings, coefficients (safetensors) and finished cells (JSON lines).

    `settings.json` records what the work was computed from (see `Settings.fingerprint`) and a run with
    anything different is refused. Each cell line and each coefficient file also carries the short id of
    that record, so work from another record (say, after `settings.json` was deleted) is recomputed,
    never reused; so are damaged pieces (a truncated file, a malformed line, a cell of the wrong length)."""

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
            tmp.write_text(json.dumps(fingerprint, sort_keys=True, indent=1))
            os.replace(tmp, stamp)
        self.rank = rank
        self.cells_file = self.path / ("cells.jsonl" if rank == 0 else f"cells.rank{rank}.jsonl")
        self.cells, self.probs = {}, {}
        for file in sorted(self.path.glob("cells*.jsonl")):  # every shard's, so any split resumes
            for line in file.read_bytes().decode("utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by an interruption
                    continue
                if (isinstance(row, dict) and row.get("run") == self.run and isinstance(row.get("key"), str)
                        and isinstance(row.get("correct"), list)
                        and all(isinstance(x, bool) for x in row["correct"])
                        and valid_prob(row.get("prob"), len(row["correct"]))):
                    self.cells[row["key"]] = row["correct"]
                    if row.get("prob") is not None:
                        self.probs[row["key"]] = row["prob"]
        # a line cut off by a kill has no newline: end it, so the next cell starts a line of its own
        if self.cells_file.is_file() and self.cells_file.stat().st_size:
            with open(self.cells_file, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(self.cells_file, "ab") as g:
                        g.write(b"\n")

    def keep_cells(self, expected_length, graded: bool = False) -> None:
        """Drop cells whose list of answers does not have the length this run expects, and with `graded`
        those saved without the graded outcome (both recomputed): a result never mixes cells with and
        without it."""
        self.cells = {k: v for k, v in self.cells.items()
                      if expected_length(k) == len(v) and (k in self.probs or not graded)}
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
            save_file({"coefficients": value.contiguous()}, str(file) + ".tmp", metadata={"run": self.run})
            os.replace(str(file) + ".tmp", file)
        return value

    def save_cell(self, key: str, correct: list[bool], prob: list[float] | None = None) -> None:
        """One finished cell: per question, right or wrong and, in cloze and logits modes, p(correct)."""
        record = {"key": key, "correct": correct, "run": self.run, **({"prob": prob} if prob is not None else {})}
        with open(self.cells_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.cells[key] = correct
        if prob is not None:
            self.probs[key] = prob


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
