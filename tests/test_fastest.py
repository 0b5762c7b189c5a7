"""`--dtype auto` and GreedyHead's screening follow the measured speed of bf16 products (stubbed here)."""

import json

import pytest
import torch

import minipss
from minipss.cli import main
from minipss.model import fastest
from minipss.model.generate import GreedyHead
from minipss.run.pipeline import run_pss
from minipss.run.settings import Settings
from tiny import make_bench, make_tiny_model


def stub_speedup(monkeypatch, factor: float) -> list:
    """bf16 products measured `factor` times faster than fp32; returns the shapes asked about."""
    asked = []

    def measured(device, shape):
        asked.append((device, shape))
        return factor

    monkeypatch.setattr(fastest, "bf16_speedup", measured)
    return asked


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast")
    return make_tiny_model(d / "m", d_ff=32), make_bench(d / "bench.jsonl", n_concepts=6, n_mcq=2)


def test_auto_resolves_to_bf16_where_faster_and_fp32_elsewhere(monkeypatch):
    asked = stub_speedup(monkeypatch, 2.5)
    dtype, why = fastest.resolve_dtype("auto", "cpu", (640, 2048))
    assert dtype == "bfloat16" and "2.5x faster" in why
    assert asked == [("cpu", (fastest.ROWS, 640, 2048))]  # the MLP's own shape
    stub_speedup(monkeypatch, 0.25)
    dtype, why = fastest.resolve_dtype("auto", "cpu", (640, 2048))
    assert dtype == "float32" and "4.0x slower" in why
    assert fastest.resolve_dtype("bfloat16", "cpu", (640, 2048)) == ("bfloat16", "as requested")
    with pytest.raises(ValueError, match="--dtype 'half'"):
        fastest.resolve_dtype("half", "cpu", (640, 2048))


def test_a_model_too_small_to_time_stays_fp32(setup, tmp_path):
    r = run_pss(*setup, tmp_path / "r.json", Settings(mode="cloze", ratios=[0.1], skip_layers=1, dtype="auto"),
                quiet=True)
    assert r["settings"]["dtype"] == "float32" and "too small" in r["settings"]["dtype_choice"]
    assert not GreedyHead(minipss.load_model(setup[0])).screen


def test_the_result_records_the_resolved_dtype(setup, tmp_path, monkeypatch):
    model, bench = setup
    stub_speedup(monkeypatch, 3.0)
    out = tmp_path / "r.json"
    main(["pss", "--model", str(model), "--bench", str(bench), "--out", str(out), "--mode", "cloze",
          "--ratios", "0.1", "--skip-layers", "1", "--quiet"])  # --dtype auto is the default
    settings = json.loads(out.read_text())["settings"]
    assert settings["dtype"] == "bfloat16" and settings["dtype_choice"].startswith("auto: bf16 product 3.0x")
    stub_speedup(monkeypatch, 0.5)
    r = run_pss(model, bench, tmp_path / "s.json", Settings(mode="cloze", ratios=[0.1], skip_layers=1, dtype="auto"),
                quiet=True)
    assert r["settings"]["dtype"] == "float32"


def test_a_resume_after_the_resolved_dtype_changed_is_refused(setup, tmp_path, monkeypatch):
    model, bench = setup
    s = Settings(mode="cloze", ratios=[0.1], skip_layers=1, dtype="auto")
    stub_speedup(monkeypatch, 2.0)
    run_pss(model, bench, tmp_path / "r.json", s, quiet=True)
    stub_speedup(monkeypatch, 0.5)  # another machine: auto resolves to fp32 there
    with pytest.raises(ValueError, match="dtype"):
        run_pss(model, bench, tmp_path / "r.json", s, quiet=True)
    stub_speedup(monkeypatch, 2.0)
    assert run_pss(model, bench, tmp_path / "r.json", s, quiet=True)["settings"]["dtype"] == "bfloat16"


def test_greedy_head_screens_only_where_bf16_is_faster(setup, monkeypatch):
    model = minipss.load_model(setup[0])
    x = torch.randn(50, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    full = model.head(x).argmax(-1)
    asked = stub_speedup(monkeypatch, 0.3)
    slow = GreedyHead(model)
    vocab, d = model.get_submodule(model.head_path).weight.shape
    assert not slow.screen and asked == [("cpu", (fastest.ROWS, d, vocab))]
    stub_speedup(monkeypatch, 3.0)
    fast = GreedyHead(model)
    assert fast.screen
    assert torch.equal(slow(x), full) and torch.equal(fast(x), full)
    assert GreedyHead(model, screen=True).screen and not GreedyHead(model, screen=False).screen
    assert torch.equal(GreedyHead(model, screen=False)(x), full)


def test_greedy_head_refuses_to_screen_where_it_cannot(setup, monkeypatch):
    stub_speedup(monkeypatch, 3.0)
    model16 = minipss.load_model(setup[0], dtype=torch.bfloat16)
    assert not GreedyHead(model16).screen  # bf16 weights: nothing to screen for
    with pytest.raises(ValueError, match="fp32"):
        GreedyHead(model16, screen=True)
