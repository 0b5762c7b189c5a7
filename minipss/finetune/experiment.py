"""The causal experiment of §5 (Table 2): fine-tune FT-FV, FT-PV, FT-CV and FT-RV from the same start with
the same data, steps and seed, then compare knowledge and hallucination metrics before and after.

    minipss experiment --model DIR --out DIR [--concepts "A;B"] [--steps N] [--mode cloze]

Writes `OUT/table.json`, `OUT/table.md` and, with the plot extra, `OUT/table.png`. Each variant's
checkpoint is kept in `OUT/<variant>/`; finished evaluations are saved, so a rerun resumes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .. import files, interrupts, lock
from ..method.benchmark import benchmark_path, load_benchmark, unrelated_sets
from ..method.open_questions import open_answers
from ..method.pss import mcq_answers, mean
from ..method.training import VARIANTS, located_scores, read_documents, value_vector_sets
from ..model.families import read_config
from ..model.fastest import resolve_dtype
from ..model.load import load_model
from ..model.tokenizer import load_tokenizer
from ..run import checks
from ..run.checks import check_prompt_lengths
from ..run.fingerprint import file_digest, model_digest
from ..run.options import dtype_option, numbers
from ..run.pipeline import measure
from ..run.report import build_result, markdown_table
from ..run.settings import Settings
from ..run.trainer import TrainSettings, check_seq_len, train
from ..run.workdir import Unsaved
from .hallucination import lid_for_questions, sample_answers, semantic_entropy


METRICS = ("mcq_acc", "open_acc", "pss", "semantic_entropy", "semantic_entropy_weighted", "lid")


def passages_path() -> Path:
    return Path(__file__).parent.parent / "data" / "passages.jsonl"


def evaluate(model_dir, bench, names: list[str], s, work: Path) -> dict:
    """MCQ and open accuracy on the chosen concepts, PSS with the chosen concepts as the benchmark,
    semantic entropy and LID on their open questions."""
    model = load_model(model_dir, dtype=getattr(torch, s.dtype), device=s.device)
    tok = load_tokenizer(model_dir)
    concepts = [c for c in load_benchmark(bench) if c.name in names]
    mcq = [q for c in concepts for q in c.mcq]
    opens = [q for c in concepts for q in c.open]
    answers = mcq_answers(model, tok, mcq, s.mode)
    open_ok, greedy = open_answers(model, tok, opens, max_new_tokens=s.open_tokens, return_texts=True)
    entropies, weighted = [], []
    for i, q in enumerate(opens):
        texts, logps = sample_answers(model, tok, q["question"], n=s.samples, seed=s.seed + i)
        se = semantic_entropy(texts, logps)
        entropies.append(se["discrete"])
        weighted.append(se["weighted"])
    lids = lid_for_questions(model, tok, opens, [g.split("\n")[0].strip() for g in greedy])
    settings = Settings(mode=s.mode, ratios=s.ratios, dtype=s.dtype, dtype_choice=getattr(s, "dtype_choice", ""),
                        device=s.device, seed=s.seed,
                        skip_layers=s.skip_layers)
    others = unrelated_sets(concepts, settings.n_unrelated, settings.seed)
    cells, probs, timing, _ = measure(model, tok, concepts, others, settings, Unsaved(), quiet=True)
    pss = build_result(str(model_dir), str(bench), asdict(settings), concepts, others, cells, timing, probs=probs)
    with interrupts.writing(work):
        files.write_whole(work / "pss.json", json.dumps(pss, indent=1))
    return {"mcq_acc": sum(a == q.answer for a, q in zip(answers, mcq)) / len(mcq),
            "open_acc": sum(open_ok) / len(open_ok), "pss": pss["pss"],
            "semantic_entropy": mean(entropies), "semantic_entropy_weighted": mean(weighted),
            "lid": mean(lids)}


def markdown(table: dict) -> str:
    rows = [[name] + ["-" if row.get(m) is None else f"{row[m]:.3f}" for m in METRICS] for name, row in table.items()]
    return "\n".join(markdown_table(["model", *METRICS], rows)) + "\n"


def passage_concepts(path: Path) -> list[str]:
    """The `concept` of every passage in a JSONL file (read with `read_documents` first), in file order;
    a line without one is named."""
    names = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            concept = json.loads(line).get("concept")
            if not isinstance(concept, str) or not concept.strip():
                raise ValueError(f"{path}:{n}: needs a non-empty string field 'concept' (or give --concepts)")
            names.append(concept)
    return names


def check(a, bench: Path, data: Path) -> list[str]:
    """Every option and input, before any work: both runs' settings, the model folder, the benchmark and the
    passages read whole, the chosen concepts, every prompt within the model's context, --out its own.
    Returns the concept names."""
    TrainSettings(steps=a.steps, lr=a.lr, seed=a.seed, device=a.device, batch_size=a.batch_size,
                  seq_len=a.seq_len, warmup=max(1, a.steps // 10), dtype=a.dtype).check()
    Settings(mode=a.mode, ratios=a.ratios, dtype=a.dtype, device=a.device, seed=a.seed,
             skip_layers=a.skip_layers).check()
    checks.integer("--samples", a.samples, 1)
    checks.integer("--open-tokens", a.open_tokens, 1)
    config = read_config(checks.model_folder(a.model))
    if a.skip_layers >= config.num_layers:
        raise ValueError(f"--skip-layers {a.skip_layers} leaves nothing to mask in a model of "
                         f"{config.num_layers} layers")
    check_seq_len(a.seq_len, config, Path(a.model))
    concepts = load_benchmark(files.input_file(bench, "benchmark"))
    read_documents(files.input_file(data, "passages file"))
    names = [n.strip() for n in a.concepts.split(";") if n.strip()] if a.concepts else sorted(
        set(passage_concepts(data)))[:10]
    unknown = [n for n in names if n not in {c.name for c in concepts}]
    if unknown:
        raise ValueError(f"--concepts: {bench} has no concept named {', '.join(map(repr, unknown))}")
    if len(set(names)) < 6:
        raise ValueError(f"--concepts: the experiment needs at least 6 different concepts (PSS compares each "
                         f"with 5 others), got {len(set(names))}")
    check_prompt_lengths([c for c in concepts if c.name in names], load_tokenizer(a.model), config, a.model,
                         a.mode, bench)
    files.output_folder(a.out, [bench, data, Path(a.model)], "--out")
    checks.own_folder(a.out, stamp_of(a, bench, data))
    return names


def stamp_of(a, bench: Path, data: Path) -> dict:
    """What the saved table and checkpoints in --out were computed from."""
    settings = {k: v for k, v in vars_of(a).items() if k not in ("quiet", "device", "out", "model", "bench", "data",
                                                                          "dtype_choice")}
    return {"command": "experiment", **settings, **{f"model {k}": v for k, v in model_digest(a.model).items()},
            "bench": file_digest(bench), "data": file_digest(data)}


def main(a) -> dict:
    bench = Path(a.bench or benchmark_path("minispecwiki"))
    data = Path(a.data or passages_path())
    checks.check_device(a.device)
    c = read_config(checks.model_folder(a.model))
    a.dtype, a.dtype_choice = resolve_dtype(a.dtype, a.device, (c.hidden_size, c.intermediate_size))
    if not a.quiet:
        print(f"dtype {a.dtype} ({a.dtype_choice})", file=sys.stderr, flush=True)
    names = check(a, bench, data)
    with lock.hold(a.out):  # one run per --out
        checks.own_folder(a.out, stamp_of(a, bench, data))  # again, now that no other run can change it
        interrupts.saved(a.out, lambda: finished_rows(Path(a.out)))
        with interrupts.writing(a.out):
            out = checks.claim(a.out, stamp_of(a, bench, data))
        return _main(a, out, bench, data, names, c)


def _main(a, out: Path, bench: Path, data: Path, names: list[str], c) -> dict:
    saved = out / "table.json"
    table = json.loads(saved.read_text())["table"] if saved.exists() else {}

    def record(name, model_dir):
        if name not in table:
            work = out / f"eval-{name}"
            work.mkdir(exist_ok=True)
            print(f"[experiment] evaluating {name}", file=sys.stderr, flush=True)
            table[name] = evaluate(model_dir, bench, names, a, work)
            with interrupts.writing(saved):
                files.write_whole(saved, json.dumps({"concepts": names, "settings": vars_of(a), "table": table},
                                                     indent=1))
            interrupts.pause_point()

    record("before", a.model)
    model = load_model(a.model, device=a.device)
    scores = located_scores(model, load_tokenizer(a.model), load_benchmark(bench), names, seed=a.seed)
    del model
    s = TrainSettings(steps=a.steps, lr=a.lr, seed=a.seed, device=a.device, batch_size=a.batch_size,
                      seq_len=a.seq_len, warmup=max(1, a.steps // 10))
    for variant in VARIANTS:
        name = f"FT-{variant.upper()}"
        if name not in table:
            sets = value_vector_sets(variant, c.num_layers, c.intermediate_size, scores, s.r_pv, a.seed)
            print(f"[experiment] training {name}", file=sys.stderr, flush=True)
            s.variant = variant
            train(a.model, data, out / variant, s, sets, quiet=a.quiet)
        record(name, out / variant)
    with interrupts.writing(out):
        files.write_whole(out / "table.md", markdown(table))
    try:
        plot(table, out / "table.png")
    except ModuleNotFoundError:
        pass
    print(markdown(table))
    return table


def finished_rows(out: Path) -> str:
    """What a stop now leaves in `out` (`interrupts.saved`)."""
    rows = list(json.loads((out / "table.json").read_text())["table"]) if (out / "table.json").is_file() else []
    return f"the finished rows of table.json ({', '.join(rows) or 'none yet'}) and each trained variant"


def vars_of(a) -> dict:
    return {k: v for k, v in vars(a).items() if k != "func"}


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3 * len(METRICS), 3))
    for ax, metric in zip(axes, METRICS):
        names = [n for n in table if table[n].get(metric) is not None]
        ax.bar(names, [table[n][metric] for n in names])
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bench", default=None, help="default: the bundled minispecwiki")
    p.add_argument("--data", default=None, help="default: the bundled knowledge passages")
    p.add_argument("--concepts", default=None, help='";"-separated; default: the first 10 passage concepts')
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--mode", default="cloze", choices=["generate", "logits", "cloze"])
    p.add_argument("--ratios", type=numbers, default=[0.01])
    p.add_argument("--skip-layers", type=int, default=5)
    p.add_argument("--samples", type=int, default=10, help="sampled answers per open question")
    p.add_argument("--open-tokens", type=int, default=150, help="greedy tokens per open answer (METHOD.md §5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    dtype_option(p, ("float32", "bfloat16"), what="evaluation dtype; ")
    p.add_argument("--quiet", action="store_true")
