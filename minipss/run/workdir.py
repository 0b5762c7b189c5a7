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
        self.cells = {}
        for file in sorted(self.path.glob("cells*.jsonl")):  # every shard's, so any split resumes
            for line in file.read_bytes().decode("utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by an interruption
                    continue
                if (isinstance(row, dict) and row.get("run") == self.run and isinstance(row.get("key"), str)
                        and isinstance(row.get("correct"), list)
                        and all(isinstance(x, bool) for x in row["correct"])):
                    self.cells[row["key"]] = row["correct"]
        # a line cut off by a kill has no newline: end it, so the next cell starts a line of its own
        if self.cells_file.is_file() and self.cells_file.stat().st_size:
            with open(self.cells_file, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(self.cells_file, "ab") as g:
                        g.write(b"\n")

    def keep_cells(self, expected_length) -> None:
        """Drop cells whose list of answers does not have the length this run expects (recomputed)."""
        self.cells = {k: v for k, v in self.cells.items() if expected_length(k) == len(v)}

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

    def save_cell(self, key: str, correct: list[bool]) -> None:
        with open(self.cells_file, "a") as f:
            f.write(json.dumps({"key": key, "correct": correct, "run": self.run}) + "\n")
        self.cells[key] = correct


class Unsaved:
    """Work kept in memory only, for a caller that saves its own results (the §5 experiment): the part
    of `WorkDir` that `measure` uses."""

    def __init__(self):
        self.cells: dict[str, list[bool]] = {}

    def coefficients(self, compute, name: str = "coefficients", shape=None) -> torch.Tensor:
        return compute()

    def save_cell(self, key: str, correct: list[bool]) -> None:
        self.cells[key] = correct

    def keep_cells(self, expected_length) -> None:
        pass  # nothing saved, nothing stale
