"""minipss: the Parameter Specialization Score (NeurIPS 2025) in small, readable PyTorch.

    model = minipss.load_model(path, dtype=torch.float32, device="cpu")
    tok = minipss.load_tokenizer(path)
    out = model(ids, mlp_mask=mask, return_coefficients=True)
"""

from .method.benchmark import benchmark_path
from .model.load import load_model
from .model.tokenizer import load_tokenizer

__version__ = "0.1.0"


__all__ = ["load_model", "load_tokenizer", "benchmark_path"]
