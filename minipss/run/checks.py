"""What every command checks before any work (README, "What minipss guarantees"): options in range, model
folders, output paths that are the command's own, prompts that fit the model (the checks of single files and
folders are in `minipss/files.py`). Each check raises ValueError or OSError naming the
option, file or folder at fault; `minipss/cli.py` turns those into exit code 2 with the message alone.

A folder a command writes is its own: new, empty, or holding the command's stamp (`claim` writes it first)
with the same record, in which case the command resumes or does nothing. Anything else is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..files import foreign, inside, write_whole, writable_place
from ..method.benchmark import Concept
from ..method.prompts import coefficient_prompt, mcq_prompt
from ..method.pss import GENERATE_TOKENS, cloze_tokens
from .fingerprint import differences

STAMP = "minipss.json"  # in a folder a command writes: which command and settings wrote it


# ---------------------------------------------------------------- options


def integer(option: str, value, low: int = 1, high: int | None = None) -> None:
    """An integer in [low, high] (high None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        what = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{option} {value!r}: must be an integer {what}")


def positive(option: str, value, zero: bool = False) -> None:
    """A finite number > 0 (`zero`: >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{option} {value!r}: must be a {'non-negative' if zero else 'positive'} number")


def seed(option: str, value) -> None:
    integer(option, value, 0, 2 ** 32 - 1)


def ratios(option: str, values) -> None:
    """At least one ratio, each in [0, 1], none twice."""
    if not values:
        raise ValueError(f"{option}: give at least one ratio (comma-separated numbers in [0, 1])")
    for r in values:
        if not 0 <= r <= 1:  # also refuses nan
            raise ValueError(f"{option}: {r} is outside [0, 1]")
    if len(set(values)) != len(values):
        raise ValueError(f"{option}: {list(values)} lists a ratio twice")


def choice(option: str, value, known) -> None:
    """`value` among `known`; the message names the unknown value and lists the known ones."""
    if value not in known:
        raise ValueError(f"{option} {value!r}: choose one of {', '.join(map(str, known))}")


def choices(option: str, values, known) -> None:
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(f"{option}: unknown {', '.join(map(repr, unknown))}; choose among {', '.join(known)}")
    if not values:
        raise ValueError(f"{option}: choose at least one of {', '.join(known)}")


def multiple(option: str, value: int, of_option: str, of: int) -> None:
    if value % of:
        raise ValueError(f"{option} {value} is not a multiple of {of_option} {of}")


def check_device(device: str) -> None:
    """`cpu`, `cuda` or `cuda:N` that this machine has; raises ValueError naming --device otherwise."""
    if device == "cpu":
        return
    kind, _, number = device.partition(":")
    if kind != "cuda" or (number and not number.isdigit()):
        raise ValueError(f"--device {device!r}: choose cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}); use --device cpu")
    if number and int(number) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


# ---------------------------------------------------------------- inputs


def model_folder(path, option: str = "--model") -> Path:
    """A folder holding config.json."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{option} {path}: not a model folder (no config.json)")
    return path


def model_inputs(model_dir) -> list[Path]:
    """Every file of a model folder (the run reads some of them; none may be written over)."""
    folder = Path(model_dir)
    return [f for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []


# ---------------------------------------------------------------- outputs


def output_paths(out: Path) -> tuple[Path, Path, Path]:
    """`minipss pss`: the result JSON, the CSV beside it and the work folder."""
    return out, out.with_suffix(".csv"), out.parent / (out.name + ".work")


def check_outputs(out: Path, inputs: list[Path], name: str = "--out") -> None:
    """`minipss pss`, before any work: every path the run will write is writable, is not a folder where a
    file goes, and is none of the inputs; the JSON and the CSV are different files."""
    json_path, csv_path, work = output_paths(out)
    if csv_path == json_path:
        raise ValueError(f"{name} {out}: the result is JSON and its CSV is written beside it as "
                         f"<name>.csv; give a path that does not end in .csv (e.g. {out.with_suffix('.json')})")
    for p in (json_path, csv_path, json_path.with_name(json_path.name + ".tmp"),
              csv_path.with_name(csv_path.name + ".tmp")):
        taken = [q for q in inputs if q.exists() and p.resolve() == q.resolve()]
        if taken:
            raise ValueError(f"{name} {out}: would write {p}, which is an input ({taken[0]}); choose another path")
        if p.is_dir():
            raise ValueError(f"{name} {out}: {p} is an existing folder; give a file path")
    writable_place(json_path, name)
    if work.exists() and not work.is_dir():
        raise ValueError(f"{name} {out}: {work} (where work is saved) exists and is not a folder")
    if any(inside(q.resolve(), work.resolve()) for q in inputs if q.exists()):
        raise ValueError(f"{name} {out}: the work folder {work} holds an input; choose another path")


def own_folder(out, record: dict, option: str = "--out", stamp: str = STAMP, ignore=()) -> str:
    """Whether `out` is this command's to write: "new" (absent or empty) or "same" (holds `stamp` with
    this `record`, but for keys in `ignore`). A folder holding anything else, or a run with another record,
    is refused, naming the folder, what it holds and what differs."""
    out = Path(out)
    if not out.is_dir() or not any(out.iterdir()):
        return "new"
    if not (out / stamp).is_file():
        raise foreign(out, option)
    try:
        saved = json.loads((out / stamp).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        saved = None
    diff = differences(saved, record, ignore)
    if diff:
        raise ValueError(f"{option} {out} holds a run with other settings or inputs (" + "; ".join(diff)
                         + f"); to start over, remove the folder {out}, or choose another {option}")
    return "same"


def claim(out, record: dict, stamp: str = STAMP) -> Path:
    """Create `out` if needed and write the stamp (whole) that makes it this command's own."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_whole(out / stamp, json.dumps(record, sort_keys=True, indent=1))
    return out


def context_length(config) -> int | None:
    """The longest sequence the model was built for, when its config says (each family reads its key)."""
    value = config.max_positions
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_prompt_lengths(concepts: list[Concept], tok, config, model_dir, mode: str | None,
                         bench: Path) -> None:
    """Refuse, before any work, a question whose prompt (plus what is generated after it) would run past
    the model's `max_position_embeddings`. `mode` None checks only the coefficient prompts."""
    limit = context_length(config)
    if limit is None:
        return
    for c in concepts:
        for k, q in enumerate(c.mcq):
            lengths = {"coefficient": len(tok.encode(coefficient_prompt(q)))}
            if mode == "generate":
                lengths["generate"] = len(tok.encode(mcq_prompt(q))) + GENERATE_TOKENS
            elif mode == "logits":
                lengths["logits"] = len(tok.encode(mcq_prompt(q)))
            elif mode == "cloze":
                ctx, options = cloze_tokens(tok, q)
                lengths["cloze"] = len(ctx) + max(len(o) for o in options)
            for what, n in lengths.items():
                if n > limit:
                    raise ValueError(
                        f"{bench}:{c.line}: concept {c.name!r} mcq[{k}]: its {what} prompt needs {n} positions; "
                        f"the model reads at most {limit} (max_position_embeddings in {Path(model_dir) / 'config.json'})")
