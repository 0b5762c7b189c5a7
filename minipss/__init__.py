"""minipss: the Parameter Specialization Score (NeurIPS 2025) in small, readable PyTorch.

    model = minipss.load_model(path, dtype=torch.float32, device="cpu")
    tok = minipss.load_tokenizer(path)
    out = model(ids, mlp_mask=mask, return_coefficients=True)
"""

from pathlib import Path

from .model.load import load_model
from .model.tokenizer import load_tokenizer

__version__ = "0.1.0"


def benchmark_path(name: str = "minispecwiki"):
    """Path of a benchmark JSONL bundled with the package."""
    path = Path(__file__).parent / "data" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no bundled benchmark named {name!r} ({path})")
    return path


__all__ = ["load_model", "load_tokenizer", "benchmark_path"]
