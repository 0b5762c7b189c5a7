"""Long steps report progress at a fixed interval, and masked cells are saved as each mask finishes."""

import re
import time

import pytest
import torch

import minipss
from minipss.method import many_masks
from minipss.method.benchmark import load_benchmark
from minipss.method.controls import random_ranking
from minipss.method.pss import mask_for
from minipss.model.decoder import Decoder
from minipss.run.pipeline import run_pss
from minipss.run.settings import Settings
from tiny import make_bench, make_tiny_model

LINE = re.compile(r"^\[masked\] (\d+)/(\d+) rows, (\d+)s elapsed, (~\d+s left|estimating)$", re.M)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    return make_tiny_model(d / "m", d_ff=32), make_bench(d / "bench.jsonl", n_concepts=7, n_mcq=2)


def slowed(monkeypatch, seconds: float) -> None:
    run_blocks = Decoder.run_blocks

    def slow(self, *args, **kwargs):
        time.sleep(seconds)
        return run_blocks(self, *args, **kwargs)

    monkeypatch.setattr(Decoder, "run_blocks", slow)


@pytest.mark.parametrize("engine", [True, False])
def test_a_slow_masked_phase_reports_at_the_interval(setup, tmp_path, monkeypatch, capsys, engine):
    slowed(monkeypatch, 0.02 if not engine else 0.1)  # the engine makes fewer, larger calls
    interval = 0.2
    s = Settings(mode="cloze", ratios=[0.1, 0.3, 0.5], skip_layers=1, control=True, engine=engine, dtype="float32")
    result = run_pss(*setup, tmp_path / "r.json", s, report_every=interval)
    err = capsys.readouterr().err
    lines = LINE.findall(err)
    totals = {int(t) for _, t, _, _ in lines}
    assert len(totals) == 1 and int(lines[-1][0]) == totals.pop()  # the last line: everything done
    done = [int(d) for d, _, _, _ in lines]
    assert done == sorted(done)
    masked = result["timing_s"]["masked"]
    assert masked > 5 * interval
    assert len(lines) >= masked / interval / 2  # a line every interval (half of them, for a busy machine)
    assert any(left.startswith("~") for *_, left in lines[:-1])
    assert "[coefficients]" in err and "[baseline]" in err


def test_quiet_prints_no_progress(setup, tmp_path, monkeypatch, capsys):
    slowed(monkeypatch, 0.02)
    s = Settings(mode="cloze", ratios=[0.1, 0.3], skip_layers=1, control=True, dtype="float32")
    run_pss(*setup, tmp_path / "r.json", s, quiet=True, report_every=0.1)
    assert capsys.readouterr().err == ""


def test_each_mask_is_handed_over_as_soon_as_its_questions_are_answered(setup):
    model, tok = minipss.load_model(setup[0]), minipss.load_tokenizer(setup[0])
    qs = [q for c in load_benchmark(setup[1]) for q in c.mcq]
    masks = torch.stack([mask_for(random_ranking((4, 32), s), r, 1) for s in range(4) for r in (0.2, 0.6)])
    which = [list(range(m, m + 6)) for m in range(len(masks))]
    small = {"logits": dict(max_rows=2), "cloze": dict(max_rows=24), "generate": dict(max_rows=2)}
    run = {"logits": many_masks.letter_answers, "cloze": many_masks.cloze_answers,
           "generate": many_masks.generate_answers}
    for mode in ("logits", "cloze", "generate"):
        events = []
        answers = run[mode](model, tok, qs, masks, 1, which=which, **small[mode],
                            on_mask=lambda m, got: events.append(("mask", m, got)),
                            progress=lambda n: events.append(("rows", n)))
        assert answers == many_masks.answers(model, tok, qs, masks, 1, mode, which=which)
        handed = {e[1]: e[2] for e in events if e[0] == "mask"}
        assert handed == dict(enumerate(answers))  # every mask once, with its answers
        assert sum(e[1] for e in events if e[0] == "rows") == sum(map(len, which))
        first = next(k for k, e in enumerate(events) if e[0] == "mask")
        assert any(e[0] == "rows" for e in events[first:]), mode  # handed over before the last rows ran
