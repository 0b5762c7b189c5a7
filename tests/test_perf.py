"""`minipss perf` runs one workload through minipss and through the transformers reference."""

import pytest

from minipss.cli import main
import torch

from tiny import make_tiny_model

pytest.importorskip("transformers")


@pytest.mark.parametrize("mode", ["logits", "cloze"])
def test_perf_reports_speed_and_agreement_with_the_reference(tmp_path, capsys, mode):
    model = make_tiny_model(tmp_path / "m", layers=3, d_ff=32)
    main(["perf", "--model", str(model), "--mode", mode, "--concepts", "1", "--ratios", "0.25",
          "--skip-layers", "1"])
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip())
    assert float(lines["answers_agree"]) == 1.0
    # 1 concept: its 10 questions and 5 unrelated concepts' 50 (the bundled benchmark), under 2 masks each
    assert int(lines["prompts"]) == 2 * 60
    assert lines["mode"] == mode and lines["device"] == "cpu"
    for side in ("minipss", "reference"):  # times are measured, so only their sign is known here
        assert float(lines[f"{side}_s"]) > 0 and float(lines[f"{side}_prompts_per_s"]) > 0


def test_perf_on_random_weights_of_a_config(tmp_path, capsys):
    import json

    tok_dir = make_tiny_model(tmp_path / "tok", layers=2, d_ff=16)
    cfg = tmp_path / "shape.json"
    cfg.write_text(json.dumps({"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 48,
                               "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "max_position_embeddings": 1024}))
    main(["perf", "--model", str(tok_dir), "--config", str(cfg), "--mode", "logits", "--concepts", "1",
          "--ratios", "0.5", "--skip-layers", "1"])
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip())
    assert float(lines["answers_agree"]) == 1.0


@pytest.mark.parametrize("mode", ["logits", "generate"])
def test_the_usual_way_as_a_whole_job_finds_what_minipss_pss_finds(tmp_path, mode):
    """`python -m minipss.perf.hf_reference` (transformers, masked down_proj, one mask at a time) and `minipss pss`
    give the same per-question correctness in every cell (fp32), and the same letters: the reference's
    letters equal minipss's own for each cell's mask, rebuilt from the coefficients the run saved."""
    import json

    from safetensors.torch import load_file

    import minipss
    from minipss.method import many_masks
    from minipss.method.benchmark import load_benchmark, questions_of, unrelated_sets
    from minipss.method.controls import KINDS, ConceptStats, cell_masks
    from minipss.run.report import cell_key
    from minipss.run.settings import Settings
    from minipss.run.pipeline import run_pss
    from minipss.perf.hf_reference import run_pss as reference_pss
    from tiny import make_bench

    model = make_tiny_model(tmp_path / "m", seed=2, layers=3, d_ff=32)
    bench = make_bench(tmp_path / "b.jsonl", n_concepts=7, n_mcq=2)
    run_pss(model, bench, tmp_path / "r.json", Settings(mode=mode, ratios=[0.25, 0.5], skip_layers=1,
                                                         control=True), quiet=True)
    cells = {}
    for line in (tmp_path / "r.json.work" / "cells.jsonl").read_text().splitlines():
        row = json.loads(line)
        cells[row["key"]] = row["correct"]
    ref = reference_pss(model, bench, tmp_path / "ref.json", Settings(mode=mode, ratios=[0.25, 0.5], skip_layers=1,
                                                                     control=True))
    assert ref["cells"] == cells and len(cells) == 7 * (1 + 2 * 2)
    assert json.loads((tmp_path / "ref.json").read_text())["cells"] == cells

    ours, tok, cs = minipss.load_model(model), minipss.load_tokenizer(model), load_benchmark(bench)
    coeffs = load_file(tmp_path / "r.json.work" / "coefficients.safetensors")["coefficients"]
    others, counts = unrelated_sets(cs, 5, 0), [len(c.mcq) for c in cs]
    letters = {}
    for i, c in enumerate(cs):
        letters[cell_key("baseline", i)] = many_masks.answers(ours, tok, c.mcq, torch.ones(1, 3, 32), 1, mode)[0]
        mine = [(kind, r) for r in (0.25, 0.5) for kind in KINDS[:2]]  # located, random: the run's cells
        got = many_masks.answers(ours, tok, questions_of(cs, i, others[i]),
                                 cell_masks(i, mine, ConceptStats.whole(coeffs, counts), others[i], 1, 0)[0], 1, mode)
        letters.update({cell_key(kind, i, r): g for (kind, r), g in zip(mine, got)})
    assert letters == ref["answers"]
    assert len({a for row in letters.values() for a in row}) > 1  # answers that differ between cells


@pytest.mark.slow  # about 10-20 s on 2 cores: kept out of the fast tier, run in CI
def test_end_to_end_times_both_jobs_as_processes(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "m", layers=3, d_ff=32)
    main(["perf", "--end-to-end", "--model", str(model), "--modes", "logits", "--repeats", "2",
          "--ratios", "0.5", "--skip-layers", "1", "--json", str(tmp_path / "e2e.json")])
    out = capsys.readouterr().out
    assert "| logits |" in out
    import json

    row = json.loads((tmp_path / "e2e.json").read_text())[0]
    assert row["same_answers"]
    assert len(row["minipss_s"]) == len(row["reference_s"]) == len(row["phases"]["minipss"]) == 2
    per_round = [ref / mine for mine, ref in zip(row["minipss_s"], row["reference_s"])]
    assert row["speedup_per_round"] == pytest.approx(per_round)
    assert row["speedup_median"] == pytest.approx((per_round[0] + per_round[1]) / 2)  # the median of two
