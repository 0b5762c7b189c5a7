"""The paper's training claims, tested on a synthetic world where we set the causes (`minipss study-synth`).

    minipss study-synth --out RUN [--entities 36] [--seeds 0,1,2] [--sizes 4x64,4x128,4x192] [--steps 400]

Four studies, each a table (`RUN/study.md`, `RUN/study.json`) and a figure (`RUN/*.png`, plot extra),
every number a mean over seeds with a 95% t-interval, PSS beside the random-vector control and the
excess drop (how much more the concept's accuracy falls than the unrelated concepts'):

- emergence (Figure 4): accuracy and PSS at every saved checkpoint of the base size;
- size (Table 1): accuracy and PSS of each size at the end of the same training on the same data;
- frequency (Figure 5): accuracy and PSS per tier (exact document counts) for the base size;
- fine-tuning (Table 2): the base model learns new entities (`new.jsonl`) with FT-FV/PV/CV/RV.

Every step is saved as it finishes (pretraining resumes, PSS results are kept), so a rerun continues.
The world is fixed by `--world-seed`; a seed changes the model's initialisation and data order.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import safe_open

from ..method.benchmark import load_benchmark
from ..method.locate import located_scores, value_vector_sets
from ..method.scoring import mcq_answers, open_answers
from ..model.families import read_config
from ..model.load import load_model
from ..model.tokenizer import load_tokenizer
from ..run import checks
from ..run.options import numbers
from ..run.pipeline import run_pss
from ..run.report import summarise
from ..run.settings import Settings
from ..run.trainer import TrainSettings, train
from .pretrain import FAMILY_TYPES, PretrainSettings, bench_accuracy, checkpoints, log_spaced, pretrain
from .world import TIER_DOCS, make_world


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
VARIANT_NAMES = {"fv": "FT-FV", "pv": "FT-PV", "cv": "FT-CV", "rv": "FT-RV"}


def mean_ci(values) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95% t-interval (None for fewer than 2 values)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, T975.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


def fmt(values) -> str:
    m, h = mean_ci(values)
    return "-" if m is None else f"{m:.3f}" if h is None else f"{m:.3f} ± {h:.3f}"


def parse_size(text: str, option: str = "--sizes") -> tuple[int, int]:
    try:
        layers, hidden = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not LAYERSxHIDDEN (e.g. 4x128)") from None
    return layers, hidden


def parameters(model_dir) -> int:
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


# ---------------------------------------------------------------- steps, each saved as it finishes


def pss_of(model_dir, bench, out: Path, a: StudySettings, skip: int | None = None) -> dict:
    """`run_pss` in cloze mode with the random control; the result file is kept and reused."""
    if out.exists():
        return json.loads(out.read_text())
    s = Settings(mode="cloze", ratios=a.ratios, skip_layers=a.skip_layers if skip is None else skip,
                 seed=a.pss_seed, control=True, device=a.device, batch_size=64)
    return run_pss(model_dir, bench, out, s, quiet=True)


def cells(result: dict) -> dict:
    """What the tables show of one PSS result: overall and per tier."""
    row = {"acc": result["acc_before"], "pss": result["pss"], "excess": result["excess_drop"],
           "pss_random": result["control"]["pss"], "excess_random": result["control"]["excess_drop"],
           "tiers": {}}

    for tier, t in result["tiers"].items():
        group = [c for c in result["concepts"] if c["tier"] == tier]
        ctrl = summarise(group, [float(r) for r in result["pss_by_ratio"]], t["acc_before"], "control_by_ratio")
        row["tiers"][tier] = {"acc": t["acc_before"], "pss": t["pss"], "excess": t["excess_drop"],
                              "pss_random": ctrl["pss"], "excess_random": ctrl["excess_drop"]}
    return row


@torch.inference_mode()
def layer_ablation(model_dir, bench: Path, out: Path, device: str) -> dict:
    """Where the facts are: MCQ accuracy per tier with one layer's MLP zeroed (every value vector), with
    layers 1.. zeroed, and with every MLP zeroed. Kept in `out`."""
    if out.exists():
        return json.loads(out.read_text())
    model, tok = load_model(model_dir, device=device), load_tokenizer(model_dir)
    concepts = load_benchmark(bench)
    L, F = model.config.num_layers, model.config.intermediate_size
    masks = {"none": None}
    for layer in range(L):
        masks[f"layer {layer}"] = torch.ones(L, F).index_fill_(0, torch.tensor([layer]), 0)
    masks["layers 1.."] = torch.ones(L, F).index_fill_(0, torch.arange(1, L), 0)
    masks["all"] = torch.zeros(L, F)
    row = {}
    for name, mask in masks.items():
        row[name] = {}
        for tier in ("high", "medium", "low"):
            qs = [q for c in concepts if c.tier == tier for q in c.mcq]
            m = None if mask is None else mask.to(model.device)
            answers = mcq_answers(model, tok, qs, "cloze", m, 64)
            row[name][tier] = sum(x == q.answer for x, q in zip(answers, qs)) / len(qs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row))
    return row


def pretrain_run(world: Path, run: Path, size: str, seed: int, a: StudySettings, checkpoints=None) -> Path:
    layers, hidden = parse_size(size)
    s = PretrainSettings(family=a.family, layers=layers, hidden=hidden, heads=heads_of(hidden),
                         steps=a.steps, lr=a.lr, batch_size=a.batch_size, seed=seed,
                         checkpoints=checkpoints or [], device=a.device, warmup=max(1, a.steps // 10))
    done = run / f"step-{a.steps:06d}"
    if not done.exists():
        print(f"[study] pretraining {size} seed {seed}", file=sys.stderr, flush=True)
        pretrain(world, run, s, quiet=a.quiet)
    return done


def finetune_row(base: Path, world: Path, work: Path, variant: str | None, seed: int, a: StudySettings) -> dict:
    """Train (unless `variant` is None: the base model) and evaluate on the new and the old entities."""
    saved = work / "row.json"
    if saved.exists():
        return json.loads(saved.read_text())
    work.mkdir(parents=True, exist_ok=True)
    model_dir = base
    if variant is not None:
        names = [c.name for c in load_benchmark(world / "new_bench.jsonl")]
        c = read_config(base)
        scores = None
        if variant != "fv":
            model = load_model(base, device=a.device)
            both = load_benchmark(world / "bench.jsonl") + load_benchmark(world / "new_bench.jsonl")  # t*: old ones
            scores = located_scores(model, load_tokenizer(base), both, names, seed=seed)
            del model
        sets = value_vector_sets(variant, c.num_layers, c.intermediate_size, scores, 0.5 / 8, seed)
        s = TrainSettings(variant=variant, steps=a.ft_steps, lr=a.ft_lr, seed=seed, batch_size=8,
                          seq_len=128, warmup=max(1, a.ft_steps // 10), device=a.device)
        print(f"[study] fine-tuning {VARIANT_NAMES[variant]} seed {seed}", file=sys.stderr, flush=True)
        train(base, world / "new.jsonl", work / "model", s, sets, quiet=True)
        model_dir = work / "model"
    model = load_model(model_dir, device=a.device)
    tok = load_tokenizer(model_dir)
    new = bench_accuracy(model, tok, world / "new_bench.jsonl")["acc"]
    old = bench_accuracy(model, tok, world / "bench.jsonl")["acc"]
    opens = [q for c in load_benchmark(world / "new_bench.jsonl") for q in c.open]
    open_acc = sum(open_answers(model, tok, opens, max_new_tokens=8)) / len(opens)
    del model
    p = pss_of(model_dir, world / "new_bench.jsonl", work / "pss.json", a)
    row = {"new_acc": new, "open_acc": open_acc, "old_acc": old, "pss": p["pss"], "pss_random": p["control"]["pss"],
           "excess": p["excess_drop"], "excess_random": p["control"]["excess_drop"]}
    saved.write_text(json.dumps(row))
    return row


# ---------------------------------------------------------------- the study


@dataclass
class StudySettings:
    """Every choice of `minipss study-synth` (its options, same names)."""
    out: str
    entities: int = 36  # evaluated entities (multiple of 6)
    world_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds
    sizes: str = "4x64,4x128,4x192"  # LAYERSxHIDDEN, comma-separated
    base: str | None = None  # size for emergence, frequency, fine-tuning (default: the middle one)
    family: str = "llama"
    steps: int = 400
    checkpoints: int = 6  # log-spaced checkpoints of the base size
    lr: float = 3e-3
    batch_size: int = 16
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    skip_layers: int = 1
    pss_seed: int = 0  # draws the unrelated concepts and random vectors
    ft_steps: int = 60
    ft_lr: float = 3e-3
    studies: str = "emergence,size,frequency,finetune,layers"
    threads: int = 0  # torch threads (0: torch's default)
    device: str = "cpu"
    quiet: bool = False


STUDIES = ("emergence", "size", "frequency", "finetune", "layers")
# what the saved steps in --out depend on without naming it in their paths: a rerun must share these
RECORD = ("entities", "world_seed", "family", "steps", "checkpoints", "lr", "batch_size", "ratios", "skip_layers",
          "pss_seed")


def check(a: StudySettings) -> None:
    """Refuse out-of-range options and an --out that is not this command's, naming them, before any work."""
    checks.integer("--entities", a.entities, 6)
    checks.seed("--world-seed", a.world_seed)
    if not a.seeds:
        raise ValueError("--seeds: give at least one seed")
    for seed in a.seeds:
        checks.seed("--seeds", seed)
    sizes = [x for x in a.sizes.split(",") if x.strip()]
    if not sizes:
        raise ValueError("--sizes: give at least one LAYERSxHIDDEN")
    for option, size in [("--sizes", x) for x in sizes] + ([("--base", a.base)] if a.base else []):
        layers, hidden = parse_size(size, option)
        checks.integer(f"{option} {size}: layers", layers, 1)
        checks.integer(f"{option} {size}: hidden", hidden, 1)
        checks.multiple(f"{option} {size}: hidden", hidden, "its heads", heads_of(hidden))
        if a.skip_layers >= layers:
            raise ValueError(f"--skip-layers {a.skip_layers} leaves nothing to mask in a model of {layers} layers "
                             f"({option} {size})")
    checks.choice("--family", a.family, FAMILY_TYPES)
    for option, value, low in (("--steps", a.steps, 1), ("--checkpoints", a.checkpoints, 1),
                               ("--batch-size", a.batch_size, 1), ("--skip-layers", a.skip_layers, 0),
                               ("--ft-steps", a.ft_steps, 1), ("--threads", a.threads, 0)):
        checks.integer(option, value, low)
    checks.positive("--lr", a.lr)
    checks.positive("--ft-lr", a.ft_lr)
    checks.ratios("--ratios", a.ratios)
    checks.seed("--pss-seed", a.pss_seed)
    checks.choices("--studies", [x for x in a.studies.split(",") if x.strip()], STUDIES)
    checks.check_device(a.device)
    checks.output_folder(a.out, [], "--out")
    checks.own_folder(a.out, record_of(a))


def record_of(a: StudySettings) -> dict:
    return {"command": "study-synth", **{k: getattr(a, k) for k in RECORD}}


def heads_of(hidden: int) -> int:
    """Attention heads of a model of width `hidden` in the studies: one per 32 dimensions."""
    return max(1, hidden // 32)


def run(a: StudySettings) -> dict:
    check(a)
    out = checks.claim(a.out, record_of(a))
    t0 = time.time()
    world = out / "world"
    if not (world / "bench.jsonl").exists():
        make_world(world, a.entities, a.world_seed)
    studies = {x for x in a.studies.split(",") if x.strip()}
    sizes = [x for x in a.sizes.split(",") if x.strip()]
    base = a.base or sizes[len(sizes) // 2]
    if base not in sizes:
        sizes.append(base)
    marks = log_spaced(a.steps, a.checkpoints)
    report: dict = {"settings": {k: v for k, v in vars(a).items() if k != "func"}, "checkpoint_steps": marks}

    # emergence and frequency: the base size, every checkpoint, every seed
    emergence: dict[int, list[dict]] = {}
    curves = {}
    for seed in a.seeds:
        run_dir = out / "models" / f"{base}-s{seed}"
        pretrain_run(world, run_dir, base, seed, a, marks)
        curves[seed] = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines() if l.strip()]
        if "emergence" in studies or "frequency" in studies:
            for step, ckpt in checkpoints(run_dir):
                if "emergence" not in studies and step != a.steps:
                    continue
                print(f"[study] PSS {base} seed {seed} step {step}", file=sys.stderr, flush=True)
                res = pss_of(ckpt, world / "bench.jsonl", out / "pss" / f"{base}-s{seed}-step{step}.json", a)
                emergence.setdefault(step, []).append(cells(res))
    report["learning_curves"] = curves
    report["emergence"] = {step: rows for step, rows in emergence.items()}
    report["frequency"] = {"popularity": TIER_DOCS, "rows": emergence.get(a.steps, [])}

    # where the facts are, and PSS with every layer maskable (the final base models)
    if "layers" in studies:
        ablations, skip0 = [], []
        for seed in a.seeds:
            final = out / "models" / f"{base}-s{seed}" / f"step-{a.steps:06d}"
            ablations.append(layer_ablation(final, world / "bench.jsonl",
                                            out / "pss" / f"{base}-s{seed}-layers.json", a.device))
            print(f"[study] PSS {base} seed {seed}, no layer skipped", file=sys.stderr, flush=True)
            skip0.append(cells(pss_of(final, world / "bench.jsonl",
                                      out / "pss" / f"{base}-s{seed}-step{a.steps}-skip0.json", a, skip=0)))
        report["layers"] = {"ablation": ablations, "skip0": skip0}

    size_rows: dict[str, list[dict]] = {}
    if "size" in studies:
        for size in sizes:
            for seed in a.seeds:
                run_dir = out / "models" / f"{size}-s{seed}"
                final = pretrain_run(world, run_dir, size, seed, a, marks if size == base else [a.steps])
                res = pss_of(final, world / "bench.jsonl", out / "pss" / f"{size}-s{seed}-step{a.steps}.json", a)
                size_rows.setdefault(size, []).append({**cells(res), "params": parameters(final)})
    report["size"] = size_rows

    ft: dict[str, list[dict]] = {}
    if "finetune" in studies:
        for seed in a.seeds:
            base_final = out / "models" / f"{base}-s{seed}" / f"step-{a.steps:06d}"
            for variant in (None, "fv", "pv", "cv", "rv"):
                name = "before" if variant is None else VARIANT_NAMES[variant]
                work = out / "finetune" / f"steps{a.ft_steps}-lr{a.ft_lr:g}" / f"s{seed}" / name
                ft.setdefault(name, []).append(finetune_row(base_final, world, work, variant, seed, a))
    report["finetune"] = ft
    report["seconds"] = round(time.time() - t0, 1)
    (out / "study.json").write_text(json.dumps(report, indent=1))
    text = markdown(report, base)
    (out / "study.md").write_text(text)
    try:
        for path in plots(report, base, out):
            print(f"figure: {path}", file=sys.stderr)
    except ModuleNotFoundError:
        print("figures: install the plot extra (matplotlib)", file=sys.stderr)
    print(text)
    return report


# ---------------------------------------------------------------- tables


COLUMNS = ("acc", "pss", "pss_random", "excess", "excess_random")
HEADS = "MCQ acc | PSS | PSS random | excess drop | excess random"


def markdown(r: dict, base: str) -> str:
    seeds = len(r["settings"]["seeds"])
    lines = [f"Mean ± 95% t-interval over {seeds} seeds. Base size {base}; "
             f"ratios {r['settings']['ratios']}, first {r['settings']['skip_layers']} layer(s) never masked; "
             "cloze-mode MCQ accuracy (chance 0.25).", ""]
    curves = r["learning_curves"]
    if curves:
        lines += ["### Learning curves (base size)", "",
                  "| step | loss | acc | acc high | acc medium | acc low |", "|---|---|---|---|---|---|"]
        steps = sorted({row["step"] for rows in curves.values() for row in rows if "acc" in row})
        for step in steps:
            got = [row for rows in curves.values() for row in rows if row["step"] == step]
            lines.append(f"| {step} | " + " | ".join(fmt([g.get(k) for g in got]) for k in
                                                       ("loss", "acc", "acc_high", "acc_medium", "acc_low")) + " |")
        lines.append("")
    if r["emergence"]:
        lines += ["### Emergence over pretraining (Figure 4)", "", f"| step | {HEADS} |", "|---|---|---|---|---|---|"]
        for step in sorted(r["emergence"], key=int):
            rows = r["emergence"][step]
            lines.append(f"| {step} | " + " | ".join(fmt([x[k] for x in rows]) for k in COLUMNS) + " |")
        lines.append("")
    if r.get("layers"):
        ab = r["layers"]["ablation"]
        lines += ["### Where the facts are (base size, final checkpoint)", "",
                  "MCQ accuracy with MLPs zeroed (every value vector of the named layers):", "",
                  "| MLPs zeroed | acc high | acc medium | acc low |", "|---|---|---|---|"]
        for name in ab[0]:
            lines.append(f"| {name} | " + " | ".join(fmt([x[name][t] for x in ab]) for t in ("high", "medium", "low")) + " |")
        sk = r["layers"]["skip0"]
        lines += ["", "PSS with no layer left out of the masks (skip 0):", "",
                  f"| concepts | {HEADS} |", "|---|---|---|---|---|---|",
                  "| all | " + " | ".join(fmt([x[k] for x in sk]) for k in COLUMNS) + " |"]
        for tier in ("high", "medium", "low"):
            lines.append(f"| tier {tier} | " + " | ".join(fmt([x["tiers"][tier][k] for x in sk]) for k in COLUMNS) + " |")
        lines.append("")
    if r["size"]:
        lines += ["### Model size (Table 1)", "", f"| size | parameters | {HEADS} |", "|---|---|---|---|---|---|---|"]
        for size, rows in r["size"].items():
            lines.append(f"| {size} | {rows[0]['params'] / 1e6:.2f}M | " +
                         " | ".join(fmt([x[k] for x in rows]) for k in COLUMNS) + " |")
        lines.append("")
    freq = r["frequency"]["rows"]
    if freq:
        lines += ["### Frequency (Figure 5)", "", f"| tier | documents per entity | {HEADS} |",
                  "|---|---|---|---|---|---|---|"]
        for tier, docs in r["frequency"]["popularity"].items():
            if all(tier in x["tiers"] for x in freq):
                lines.append(f"| {tier} | {docs} | " +
                             " | ".join(fmt([x["tiers"][tier][k] for x in freq]) for k in COLUMNS) + " |")
        lines.append("")
    if r["finetune"]:
        keys = ("new_acc", "open_acc", "old_acc", "pss", "pss_random", "excess", "excess_random")
        st = r["settings"]
        lines += ["### Fine-tuning on new entities (Table 2)", "",
                  f"{st['ft_steps']} steps, lr {st['ft_lr']:g}, batch 8, on `new.jsonl` (8 entities, 4 documents each).", "",
                  "| model | new MCQ acc | new open acc | old MCQ acc | PSS (new) | PSS random | excess drop | excess random |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, rows in r["finetune"].items():
            lines.append(f"| {name} | " + " | ".join(fmt([x[k] for x in rows]) for k in keys) + " |")
        lines.append("")
    lines.append(f"Wall time: {r['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def plots(r: dict, base: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def errbar(ax, xs, rows_list, key, label, **kw):
        ms = [mean_ci(rows)[0] for rows in rows_list]
        hs = [mean_ci(rows)[1] or 0 for rows in rows_list]
        ax.errorbar(xs, [m if m is not None else float("nan") for m in ms], yerr=hs, label=label, capsize=3, **kw)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        paths.append(out / name)

    curves = r["learning_curves"]
    if curves:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        steps = sorted({row["step"] for rows in curves.values() for row in rows})
        errbar(ax1, steps, [[row["loss"] for rows in curves.values() for row in rows if row["step"] == s]
                            for s in steps], "loss", "loss")
        ax1.set_xscale("log"), ax1.set_xlabel("step"), ax1.set_ylabel("training loss")
        acc_steps = sorted({row["step"] for rows in curves.values() for row in rows if "acc" in row})
        for key in ("acc_high", "acc_medium", "acc_low"):
            errbar(ax2, acc_steps, [[row.get(key) for rows in curves.values() for row in rows if row["step"] == s]
                                    for s in acc_steps], key, key.replace("acc_", ""), marker="o")
        ax2.axhline(0.25, color="grey", ls=":", label="chance")
        ax2.set_xscale("log"), ax2.set_xlabel("step"), ax2.set_ylabel("MCQ accuracy"), ax2.legend(fontsize=7)
        save(fig, "learning.png")
    if r["emergence"]:
        steps = sorted(r["emergence"], key=int)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        xs = [int(s) for s in steps]
        errbar(ax1, xs, [[x["acc"] for x in r["emergence"][s]] for s in steps], "acc", "MCQ accuracy", marker="o")
        ax1.set_xscale("log"), ax1.set_xlabel("step"), ax1.set_title("accuracy")
        errbar(ax2, xs, [[x["pss"] for x in r["emergence"][s]] for s in steps], "pss", "PSS located", marker="o")
        errbar(ax2, xs, [[x["pss_random"] for x in r["emergence"][s]] for s in steps], "pss", "PSS random", marker="s")
        ax2.set_xscale("log"), ax2.set_xlabel("step"), ax2.set_title("PSS"), ax2.legend(fontsize=7)
        save(fig, "emergence.png")
    if r["size"]:
        sizes = list(r["size"])
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        xs = [r["size"][s][0]["params"] / 1e6 for s in sizes]
        errbar(ax1, xs, [[x["acc"] for x in r["size"][s]] for s in sizes], "acc", "MCQ accuracy", marker="o")
        ax1.set_xlabel("parameters (M)"), ax1.set_title("accuracy")
        errbar(ax2, xs, [[x["pss"] for x in r["size"][s]] for s in sizes], "pss", "PSS located", marker="o")
        errbar(ax2, xs, [[x["pss_random"] for x in r["size"][s]] for s in sizes], "pss", "PSS random", marker="s")
        ax2.set_xlabel("parameters (M)"), ax2.set_title("PSS"), ax2.legend(fontsize=7)
        save(fig, "size.png")
    freq = r["frequency"]["rows"]
    if freq:
        tiers = [t for t in r["frequency"]["popularity"] if all(t in x["tiers"] for x in freq)]
        xs = [r["frequency"]["popularity"][t] for t in tiers]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        errbar(ax1, xs, [[x["tiers"][t]["acc"] for x in freq] for t in tiers], "acc", "MCQ accuracy", marker="o")
        ax1.set_xscale("log"), ax1.set_xlabel("documents per entity"), ax1.set_title("accuracy")
        errbar(ax2, xs, [[x["tiers"][t]["pss"] for x in freq] for t in tiers], "pss", "PSS located", marker="o")
        errbar(ax2, xs, [[x["tiers"][t]["pss_random"] for x in freq] for t in tiers], "pss", "PSS random", marker="s")
        ax2.set_xscale("log"), ax2.set_xlabel("documents per entity"), ax2.set_title("PSS"), ax2.legend(fontsize=7)
        save(fig, "frequency.png")
    if r["finetune"]:
        names = list(r["finetune"])
        keys = ("new_acc", "open_acc", "old_acc", "pss", "pss_random")
        fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3))
        for ax, key in zip(axes, keys):
            ms = [mean_ci([x[key] for x in r["finetune"][n]]) for n in names]
            ax.bar(names, [m or 0 for m, _ in ms], yerr=[h or 0 for _, h in ms], capsize=3)
            ax.set_title(key, fontsize=9)
            ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        save(fig, "finetune.png")
    return paths


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(options) -> None:
    a = StudySettings(**{f.name: getattr(options, f.name) for f in fields(StudySettings)})
    check(a)  # before --threads takes effect
    if a.threads:
        torch.set_num_threads(a.threads)
    run(a)


def add_arguments(p) -> None:
    d = StudySettings(out="")
    p.add_argument("--out", required=True, help="run folder (world, models, PSS results, tables, figures)")
    p.add_argument("--entities", type=int, default=d.entities, help="evaluated entities (multiple of 6)")
    p.add_argument("--world-seed", type=int, default=d.world_seed)
    p.add_argument("--seeds", type=_ints, default=d.seeds, help="training seeds (default 0,1,2)")
    p.add_argument("--sizes", default=d.sizes, help="LAYERSxHIDDEN, comma-separated")
    p.add_argument("--base", default=None, help="size for emergence, frequency, fine-tuning (default: middle)")
    p.add_argument("--family", default=d.family)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--checkpoints", type=int, default=d.checkpoints, help="log-spaced checkpoints of the base size")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--ratios", type=numbers, default=d.ratios)
    p.add_argument("--skip-layers", type=int, default=d.skip_layers)
    p.add_argument("--pss-seed", type=int, default=d.pss_seed, help="draws the unrelated concepts and random vectors")
    p.add_argument("--ft-steps", type=int, default=d.ft_steps)
    p.add_argument("--ft-lr", type=float, default=d.ft_lr)
    p.add_argument("--studies", default=d.studies,
                   help="which to run; layers: MLP ablation per layer and PSS with no layer skipped")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: torch's default)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--quiet", action="store_true")
