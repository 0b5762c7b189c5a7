"""A run split over two processes (torch.distributed, gloo, CPU) writes the one-process result."""

import json
import os
import subprocess
import sys

import pytest

from builders import strip_timing
from tiny import make_bench, make_tiny_model


def strip(result):
    """Without timings and the process count (which differ between the one and the two-process run)."""
    result = strip_timing(result)
    result["settings"] = {k: v for k, v in result["settings"].items() if k != "processes"}
    return result


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path):
    model = make_tiny_model(tmp_path / "m")
    bench = make_bench(tmp_path / "bench.jsonl", n_concepts=7, n_mcq=2)
    args = ["pss", "--model", str(model), "--bench", str(bench), "--mode", "cloze", "--ratios", "0.1,0.5",
            "--skip-layers", "1", "--control", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "minipss", *args, "--out", str(tmp_path / "one.json")],
                   check=True, env=env, capture_output=True, timeout=300)
    # --standalone: the launcher's own store binds a free port itself (port 0), so no port is chosen
    # here and then raced for
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "minipss", *args, "--out", str(tmp_path / "two.json")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one, two_result = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two_result["settings"]["processes"] == 2
    assert strip(two_result) == strip(one)
