"""Reading and writing files safely, for every command: inputs that exist, outputs that are a command's own
place (not a folder where a file goes, not under a file, not an input, writable), and files and folders
written whole (a temporary one beside it, then a rename), so an interrupted command leaves nothing half-written.
Each check raises ValueError or OSError naming the option and the path at fault."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def input_file(path, what: str) -> Path:
    """An existing file (not a folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found" + (" (it is a folder)" if path.is_dir() else ""))
    return path


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def output_file(out, inputs, option: str) -> Path:
    """A file the command will write: not an existing folder, not under a file, not an input."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{option} {out}: is an existing folder; give a file path")
    writable_place(out, option)
    for p in inputs:
        if Path(p).exists() and out.resolve() == Path(p).resolve():
            raise ValueError(f"{option} {out}: would write over the input {p}; choose another path")
    return out


def output_folder(out, inputs, option: str) -> Path:
    """A folder the command will write: not an existing file, not under a file, neither an input nor
    inside one, holding no input."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is an existing file; give a folder")
    writable_place(out, option)
    here = out.resolve()
    for p in inputs:
        p = Path(p)
        if not p.exists():
            continue
        there = p.resolve()
        if inside(here, there) or inside(there, here):
            raise ValueError(f"{option} {out}: " + ("is (inside) the input" if inside(here, there) else "holds the input")
                             + f" {p}; choose another folder")
    return out


def writable_place(out: Path, option: str) -> None:
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {out}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK) and not out.exists():
                raise PermissionError(f"{option} {out}: cannot create it in {parent} (not writable)")
            return


def foreign(out: Path, option: str) -> ValueError:
    """The refusal of a folder holding files this command did not write, naming some of them."""
    held = sorted(p.name for p in out.iterdir())
    return ValueError(f"{option} {out}: the folder holds files minipss did not write here "
                      f"({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}); nothing in it is replaced: "
                      "choose a new or empty folder")


def write_whole(path, text: str) -> None:
    """Write a text file whole: a temporary file beside it, then a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def new_folder(out, write) -> Path:
    """Write a folder whole: `write(tmp)` fills a temporary folder beside `out`, which is then renamed to
    `out` (absent or empty); on any failure the temporary folder is removed and `out` is untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)
        os.replace(tmp, out)  # replaces an empty folder, never one holding files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
