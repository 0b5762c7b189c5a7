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
