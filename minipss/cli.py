"""The command line: `minipss pss`, `sweep`, `compare`, `study`, `train`, `experiment`, `perf`, and the
synthetic world: `minipss synth`, `pretrain`, `study-synth`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import interrupts
from .finetune import experiment
from .method.benchmark import benchmark_path, load_benchmark
from .perf import speed as perf
from .run import trainer
from .run.checks import check_outputs
from .run.options import at_least, dtype_option, numbers
from .run.pipeline import run_pss
from .run.report import summary
from .run.settings import PAPER_RATIOS, SWEEP_RATIOS, pss_arguments, settings_from
from .study import cross_model
from .study.compare import load_results, main as compare_main, plot
from .study.figures import FIGURES
from .synth import pretrain, study as study_synth, world as synth
from .weights.real_models import ensure_gemma3_270m


def cmd_pss(a, control=None) -> None:
    result = run_pss(a.model, a.bench, a.out, settings_from(a, a.control if control is None else control), a.quiet)
    if result["settings"].get("processes", 1) > 1 and int(os.environ.get("RANK", "0")):
        return  # rank 0 reports
    print(summary(result))
    print(f"\nresults: {a.out} and {Path(a.out).with_suffix('.csv')}")


QUICKSTART_CONCEPTS = 6  # 2 per tier
QUICKSTART_RATIOS = "0.01,0.1"  # where located and random vectors differ most on this model (README)
FULL_RATIOS = "0.001,0.01,0.1,0.5"


def cmd_quickstart(a) -> None:
    """Convert the real model if needed, then PSS in cloze mode with the random-vector control on a
    balanced subset of the bundled benchmark, sized to take about 5 minutes on a 2-core CPU without bf16
    units (README); `--dtype auto` picks bf16 where it is faster."""
    check_outputs(Path(a.out), [])  # before the conversion; run_pss checks the rest
    folder = Path(a.out).parent
    taken = [name for name in FIGURES if (folder / name).exists()]
    if taken and not Path(a.out).is_file():  # figures beside a result are that run's, drawn again
        raise ValueError(f"--out {a.out}: {folder} holds {', '.join(taken)}, which quickstart would replace; "
                         "choose another --out")
    model = ensure_gemma3_270m()
    bench = benchmark_path("minispecwiki")
    ratios = ",".join(map(str, a.ratios))
    argv = ["--model", str(model), "--bench", str(bench), "--out", a.out, "--mode", "cloze", "--dtype", a.dtype,
            "--concepts", str(a.concepts), "--ratios", ratios] + (["--quiet"] if a.quiet else [])
    print(f"quickstart: minipss pss --mode cloze --control --concepts {a.concepts} --ratios {ratios} "
          f"--dtype {a.dtype} (model {model})", flush=True)
    sweep = argparse.ArgumentParser()
    pss_arguments(sweep, "0.1")
    cmd_pss(sweep.parse_args(argv), control=True)
    print(f"\nthe full version (all {len(load_benchmark(bench))} concepts, ratios {FULL_RATIOS}): minipss pss "
          f"--model {model} --bench {bench} --out runs/full/result.json --mode cloze --control --ratios {FULL_RATIOS}")
    try:
        for path in plot(load_results([a.out]), folder):
            print(f"figure: {path}")
    except ImportError:
        print(f'figures: pip install "minipss[plot]", then minipss compare {a.out} --plots {folder / "figures"}')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="minipss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pss", help="locate, mask and score: the Parameter Specialization Score")
    pss_arguments(p, ",".join(map(str, PAPER_RATIOS)))
    p.add_argument("--control", action="store_true", help="also mask random vectors (same count per layer)")
    p.set_defaults(func=cmd_pss)

    p = sub.add_parser("sweep", help="PSS over many ratios (Figure 3) with the random-vector control")
    pss_arguments(p, ",".join(map(str, SWEEP_RATIOS)))
    p.set_defaults(func=lambda a: cmd_pss(a, control=True))

    p = sub.add_parser("quickstart", help="the default job: real Gemma 3 270M, bundled benchmark, CPU, minutes")
    p.add_argument("--out", default="runs/quickstart/result.json")
    p.add_argument("--concepts", type=at_least(6), default=QUICKSTART_CONCEPTS,
                   help=f"the first N concepts (default {QUICKSTART_CONCEPTS}: 2 per tier)")
    p.add_argument("--ratios", type=numbers, default=numbers(QUICKSTART_RATIOS),
                   help=f"mask ratios (default {QUICKSTART_RATIOS})")
    dtype_option(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("compare", help="compare result files: table, correlations, figures")
    p.add_argument("results", nargs="+")
    p.add_argument("--plots", default=None, help="folder for PNG figures (needs the plot extra)")
    p.set_defaults(func=compare_main)

    for name, module, text in (
            ("study", cross_model, "several models, one benchmark, one setting: Table 1, Figures 2, 3, 5, a report"),
            ("train", trainer, "fine-tune only chosen value vectors (FT-FV/PV/CV/RV, §5)"),
            ("experiment", experiment, "the §5 experiment: four fine-tuning variants, before and after"),
            ("perf", perf, "benchmark the masked evaluation against transformers + masked down_proj"),
            ("synth", synth, "write a synthetic world: documents, benchmark, tokenizer"),
            ("pretrain", pretrain, "pretrain a random model of a given size on a world"),
            ("study-synth", study_synth, "the four training studies on a synthetic world")):
        p = sub.add_parser(name, help=text)
        module.add_arguments(p)
        p.set_defaults(func=module.main)

    a = parser.parse_args(argv)
    words = list(sys.argv[1:] if argv is None else argv)
    program = ["python", "-m", "minipss"] if Path(sys.argv[0]).name == "__main__.py" else ["minipss"]
    # Ctrl-C and SIGTERM: one line naming what was saved and the command that resumes, exit 130 or 143
    with interrupts.stop_cleanly(f"minipss {a.command}", program + words):
        try:
            a.func(a)
        except (ValueError, OSError) as e:  # bad input, or a write the disk refused: named, exit code 2
            print(f"minipss: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
