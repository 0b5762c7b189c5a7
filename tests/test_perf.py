"""`minipss perf` runs one workload through minipss and through the transformers reference."""

import pytest

from minipss.cli import main
from tiny import make_tiny_model

pytest.importorskip("transformers")


@pytest.mark.parametrize("mode", ["logits", "cloze"])
def test_perf_reports_speed_and_agreement_with_the_reference(tmp_path, capsys, mode):
    model = make_tiny_model(tmp_path / "m", layers=3, d_ff=32)
    main(["perf", "--model", str(model), "--mode", mode, "--concepts", "1", "--ratios", "0.25",
          "--skip-layers", "1"])
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip())
    assert float(lines["answers_agree"]) == 1.0
    assert float(lines["minipss_prompts_per_s"]) > 0 and float(lines["reference_prompts_per_s"]) > 0
    assert int(lines["prompts"]) == 2 * 60


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
