"""What saved work was computed from: content digests of the model, tokenizer and data, plus settings.

A resumed run (`minipss pss` work folders, `minipss train` checkpoints) stores one of these dicts and is
refused when the current one differs, with a message naming what differs. Digests are of file contents,
never of paths or times: new weights written into the same folder are new weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..model.load import checkpoint_files


CHUNK = 1 << 22


def file_digest(path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def model_digest(folder) -> dict[str, str]:
    """Digests of a model folder's config, tokenizer and every weights file (the index included)."""
    folder = Path(folder)
    weights = hashlib.sha256()
    files = checkpoint_files(folder)
    index = folder / "model.safetensors.index.json"
    for f in ([index] if index.is_file() else []) + files:
        weights.update(f"{f.name}\0{f.stat().st_size}\0{file_digest(f)}\n".encode())
    tokenizer = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            tokenizer.update(f"{name}\0{file_digest(folder / name)}\n".encode())
    return {"weights": weights.hexdigest(), "config": file_digest(folder / "config.json"),
            "tokenizer": tokenizer.hexdigest()}


def short(fingerprint: dict) -> str:
    """A short id of a whole fingerprint, stamped on each piece of saved work."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _show(value) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a digest
    return json.dumps(value)


def differences(saved, now: dict, ignore=()) -> list[str]:
    """Readable `key: saved -> now` lines for every key that differs (a non-dict saved value differs
    as a whole)."""
    if not isinstance(saved, dict):
        return ["the saved record is not one this version of minipss writes"]
    now = json.loads(json.dumps(now))  # tuples read back as lists
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in ignore:
            continue
        if saved.get(key, "(absent)") != now.get(key, "(absent)"):
            out.append(f"{key}: {_show(saved.get(key, '(absent)'))} then, {_show(now.get(key, '(absent)'))} now")
    return out
