"""The paper's claims tested on a synthetic world where we set the causes (`minipss study-synth`).

    minipss study-synth --out RUN [--preset quick|default] [any option below, to change the preset]

First the premise the method rests on, per model size: are the facts in the MLPs (accuracy per tier
before and with every MLP zeroed), and do the located value vectors hurt their own concept beyond
magnitude-matched random vectors (paired tests over concepts at each ratio)? Then the claims, each a
paired test over concepts (seeds averaged) that the report states only when it is detected:

- emergence (Figure 4): the base size at checkpoints spread over the whole training, late ones included;
- size (Table 1): every size at the end of the same training on the same data;
- frequency (Figure 5): the tiers (exact document counts) of the base size, a two-sample test;
- fine-tuning (Table 2): new documents about low-tier entities the model partly knows, FT-FV/PV/CV/RV,
  several seeds and two learning rates, with forgetting on the other entities.

Every step is saved as it finishes (pretraining resumes, PSS results and rows are kept), so a rerun
continues. Design and reading: `minipss/synth/README.md`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import safe_open

from .. import files, interrupts, lock
from ..method.benchmark import load_benchmark
from ..method.open_questions import open_answers
from ..method.pss import mcq_answers
from ..method.training import located_scores, value_vector_sets
from ..model.families import read_config
from ..model.load import load_model
from ..model.tokenizer import load_tokenizer
from ..run import checks
from ..run.options import numbers
from ..run.pipeline import run_pss
from ..run.settings import Settings
from ..run.trainer import TrainSettings, train
from .pretrain import FAMILY_TYPES, PretrainSettings, pretrain
from .findings import (TIERS, emergence, finetune, frequency, markdown, plots, premise, size_study,
                       specific)
from .world import Entity, finetuned_count, knowledge, make_world


VARIANT_NAMES = {"fv": "FT-FV", "pv": "FT-PV", "cv": "FT-CV", "rv": "FT-RV"}
CHECKPOINT_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)  # of training: late checkpoints, not only early


@dataclass
class StudySettings:
    """Every choice of `minipss study-synth` (its options, same names); the defaults are the default
    preset, `PRESETS` holds the others."""
    out: str
    preset: str = "default"
    entities: int = 1200  # evaluated entities (multiple of 6): 6,000 facts
    world_seed: int = 0
    sizes: str = "4x32,4x64,4x128"  # LAYERSxHIDDEN (d_ff 4 x hidden), comma-separated
    base: str = "4x64"  # the size of emergence, frequency and fine-tuning
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # pretraining seeds (init and data order)
    family: str = "llama"
    steps: int = 3000  # about 17 passes over the 1,200-entity world at batch 32
    lr: float = 3e-3
    batch_size: int = 32
    per_group: int = 20  # concepts per tier and kind in the PSS sample (120 concepts by default)
    ratios: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.02, 0.05])
    skip_layers: int = 0  # every layer maskable: layer 0's MLP holds facts too
    unrelated: str = "same-category"  # t* from the concept's own kind (METHOD.md §2)
    pss_seed: int = 0  # draws the unrelated concepts and the random vectors
    ft_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ft_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    ft_steps: int = 60
    studies: str = "emergence,size,frequency,finetune"
    threads: int = 0  # torch threads (0: torch's default)
    device: str = "cpu"
    quiet: bool = False


PRESETS = {
    "default": {},  # the dataclass defaults: 75 minutes measured on 2 CPU cores (README)
    "quick": {"entities": 600, "sizes": "4x32,4x64", "base": "4x64", "seeds": [0], "steps": 1000,
              "per_group": 8, "ft_seeds": [0], "ft_lrs": [1e-3, 3e-3], "ft_steps": 40},  # 518 s measured on 2 cores
}
STUDIES = ("emergence", "size", "frequency", "finetune")
# what the saved steps in --out depend on without naming it in their paths: a rerun must share these
RECORD = ("entities", "world_seed", "family", "steps", "lr", "batch_size", "per_group", "ratios", "skip_layers",
          "unrelated", "pss_seed", "ft_steps")


def parse_size(text: str, option: str = "--sizes") -> tuple[int, int]:
    try:
        layers, hidden = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not LAYERSxHIDDEN (e.g. 4x128)") from None
    return layers, hidden


def heads_of(hidden: int) -> int:
    """Attention heads of a model of width `hidden` in the studies: one per 32 dimensions."""
    return max(1, hidden // 32)


def sizes_of(a: StudySettings) -> list[str]:
    sizes = [x.strip() for x in a.sizes.split(",") if x.strip()]
    return sizes + ([a.base] if a.base not in sizes else [])


def check(a: StudySettings) -> None:
    """Refuse out-of-range options and an --out that is not this command's, naming them, before any work."""
    checks.choice("--preset", a.preset, tuple(PRESETS))
    checks.integer("--entities", a.entities, 6)
    checks.seed("--world-seed", a.world_seed)
    for option, seeds in (("--seeds", a.seeds), ("--ft-seeds", a.ft_seeds)):
        if not seeds:
            raise ValueError(f"{option}: give at least one seed")
        for seed in seeds:
            checks.seed(option, seed)
    if not [x for x in a.sizes.split(",") if x.strip()]:
        raise ValueError("--sizes: give at least one LAYERSxHIDDEN")
    for option, size in [("--sizes", x.strip()) for x in a.sizes.split(",") if x.strip()] + [("--base", a.base)]:
        layers, hidden = parse_size(size, option)
        checks.integer(f"{option} {size}: layers", layers, 1)
        checks.integer(f"{option} {size}: hidden", hidden, 1)
        checks.multiple(f"{option} {size}: hidden", hidden, "its heads", heads_of(hidden))
        if a.skip_layers >= layers:
            raise ValueError(f"--skip-layers {a.skip_layers} leaves nothing to mask in a model of {layers} layers "
                             f"({option} {size})")
    checks.choice("--family", a.family, FAMILY_TYPES)
    for option, value, low in (("--steps", a.steps, 1), ("--batch-size", a.batch_size, 1),
                               ("--skip-layers", a.skip_layers, 0), ("--ft-steps", a.ft_steps, 1),
                               ("--threads", a.threads, 0)):
        checks.integer(option, value, low)
    checks.integer("--per-group", a.per_group, 2, a.entities // 6)  # >= 6 of a kind for same-kind draws
    checks.positive("--lr", a.lr)
    if not a.ft_lrs:
        raise ValueError("--ft-lrs: give at least one learning rate")
    for lr in a.ft_lrs:
        checks.positive("--ft-lrs", lr)
    if "finetune" in a.studies and finetuned_count(a.entities) < 12:
        raise ValueError(f"--entities {a.entities}: the fine-tuning study needs 12 or more low-tier entities to "
                         "fine-tune (6 of each kind for their PSS); give 36 or more, or leave finetune out of --studies")
    checks.ratios("--ratios", a.ratios)
    checks.choice("--unrelated", a.unrelated, ("any", "same-category"))
    checks.seed("--pss-seed", a.pss_seed)
    checks.choices("--studies", [x for x in a.studies.split(",") if x.strip()], STUDIES)
    checks.check_device(a.device)
    files.output_folder(a.out, [], "--out")
    checks.own_folder(a.out, record_of(a))


def record_of(a: StudySettings) -> dict:
    return {"command": "study-synth", **{k: getattr(a, k) for k in RECORD}}


# ---------------------------------------------------------------- steps, each saved as it finishes


def parameters(model_dir) -> dict:
    """Parameter counts of a saved model: all, and the MLPs' alone (where the premise puts the facts)."""
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    mlp = sum(math.prod(s) for k, s in shapes.items() if ".mlp." in k)
    return {"all": sum(math.prod(s) for s in shapes.values()), "mlp": mlp}


def sample_bench(bench: Path, per_group: int, out: Path) -> Path:
    """The concepts the PSS runs score: the first `per_group` of every (tier, kind), interleaved, so
    every tier and kind is equally present and same-kind unrelated draws have enough to choose from."""
    if out.exists():
        return out
    groups: dict = {}
    for line in bench.read_text(encoding="utf-8").splitlines():
        if line.strip():
            c = json.loads(line)
            groups.setdefault((c["tier"], c["category"]), []).append(line)
    lines = [g[i] for i in range(per_group) for g in groups.values() if i < len(g)]
    with interrupts.writing(out):
        files.write_whole(out, "".join(l + "\n" for l in lines))
    return out


def pretrain_run(world: Path, run: Path, size: str, seed: int, a: StudySettings, marks: list[int]) -> Path:
    layers, hidden = parse_size(size)
    s = PretrainSettings(family=a.family, layers=layers, hidden=hidden, heads=heads_of(hidden), steps=a.steps,
                         lr=a.lr, batch_size=a.batch_size, seed=seed, checkpoints=marks, device=a.device,
                         warmup=max(1, a.steps // 30), log_every=max(1, a.steps // 30))
    done = run / f"step-{a.steps:06d}"
    if not done.exists():
        pretrain(world, run, s, quiet=a.quiet)
    return done


@torch.inference_mode()
def ablation(model_dir, bench: Path, out: Path, device: str) -> dict:
    """Where the facts are: per tier, MCQ right answers (cloze) out of n with nothing zeroed ("before"),
    with every MLP zeroed ("all_mlps_zeroed") and with one layer's MLP zeroed ("mlp_<l>_zeroed"). Kept."""
    if out.exists():
        return json.loads(out.read_text())
    model, tok = load_model(model_dir, device=device), load_tokenizer(model_dir)
    concepts = load_benchmark(bench)
    L, F = model.config.num_layers, model.config.intermediate_size
    masks = {"before": None, "all_mlps_zeroed": torch.zeros(L, F)}
    for layer in range(L):
        masks[f"mlp_{layer}_zeroed"] = torch.ones(L, F).index_fill_(0, torch.tensor([layer]), 0)
    row: dict = {}
    for tier in TIERS:
        qs = [q for c in concepts if c.tier == tier for q in c.mcq]
        row[tier] = {}
        for name, mask in masks.items():
            answers = mcq_answers(model, tok, qs, "cloze", None if mask is None else mask.to(model.device), 64)
            right = sum(x == q.answer for x, q in zip(answers, qs))
            row[tier][name] = {"accuracy": right / len(qs), "correct": right, "n": len(qs)}
    with interrupts.writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        files.write_whole(out, json.dumps(row))
    interrupts.pause_point()
    return row


def pss_of(model_dir, bench: Path, out: Path, a: StudySettings) -> dict:
    """`run_pss` in cloze mode with both controls, the study's ratios, layers and unrelated draw; the
    result file is kept and reused."""
    if out.exists():
        return json.loads(out.read_text())
    s = Settings(mode="cloze", ratios=a.ratios, skip_layers=a.skip_layers, seed=a.pss_seed, control=True,
                 matched_control=True, unrelated=a.unrelated, device=a.device, batch_size=64,
                 dtype="float32")  # models too small for bf16 to pay (METHOD.md §10)
    return run_pss(model_dir, bench, out, s, quiet=True)


def finetune_row(base: Path, world: Path, sample: Path, work: Path, variant: str | None, seed: int, lr: float,
                 a: StudySettings) -> dict:
    """Fine-tune `base` on new.jsonl (unless `variant` is None: the base model) and measure, per
    fine-tuned entity, MCQ and open accuracy; MCQ accuracy on the sample's other entities (forgetting);
    PSS of the fine-tuned entities. Kept in `work/row.json`."""
    saved = work / "row.json"
    if saved.exists():
        return json.loads(saved.read_text())
    tuned = load_benchmark(world / "new_bench.jsonl")
    names = {c.name for c in tuned}
    model_dir = base
    if variant is not None:
        cfg = read_config(base)
        scores = None
        if variant != "fv":  # located over the fine-tuned entities against same-kind others (METHOD.md §7)
            model = load_model(base, device=a.device)
            pool = tuned + [c for c in load_benchmark(sample) if c.name not in names]
            scores = located_scores(model, load_tokenizer(base), pool, [c.name for c in tuned], seed=seed,
                                    draw=a.unrelated)
            del model
        sets = value_vector_sets(variant, cfg.num_layers, cfg.intermediate_size, scores, 0.5 / 8, seed)
        s = TrainSettings(variant=variant, steps=a.ft_steps, lr=lr, seed=seed, batch_size=8, seq_len=128,
                          warmup=max(1, a.ft_steps // 10), device=a.device)
        train(base, world / "new.jsonl", work / "model", s, sets, quiet=True)
        model_dir = work / "model"
    model, tok = load_model(model_dir, device=a.device), load_tokenizer(model_dir)
    per_mcq = [[x == q.answer for x, q in zip(mcq_answers(model, tok, c.mcq, "cloze", None, 64), c.mcq)] for c in tuned]
    per_open = [open_answers(model, tok, c.open, max_new_tokens=8) for c in tuned]
    others = [q for c in load_benchmark(sample) if c.name not in names for q in c.mcq]
    old = sum(x == q.answer for x, q in zip(mcq_answers(model, tok, others, "cloze", None, 64), others)) / len(others)
    del model
    p = pss_of(model_dir, world / "new_bench.jsonl", work / "pss.json", a)
    row = {"mcq": [sum(x) / len(x) for x in per_mcq], "open": [sum(x) / len(x) for x in per_open], "old_acc": old,
           "pss": p["pss"], "pss_matched": p["matched"]["pss"], "specific": specific(p),
           "concepts": [c.name for c in tuned]}
    with interrupts.writing(saved):
        files.write_whole(saved, json.dumps(row))
    interrupts.pause_point()
    return row


# ---------------------------------------------------------------- the study


def run(a: StudySettings) -> dict:
    check(a)
    with lock.hold(a.out):  # one run per --out
        checks.own_folder(a.out, record_of(a))  # again, now that no other run can change it
        interrupts.saved(a.out, "every finished step (world, models and their checkpoints, PSS results, "
                         "fine-tuning rows; the running step's own saved work)")
        with interrupts.writing(a.out):
            out = checks.claim(a.out, record_of(a))
        return _run(a, out)


def _run(a: StudySettings, out: Path) -> dict:
    t0 = time.time()
    studies = {x for x in a.studies.split(",") if x.strip()}
    sizes = sizes_of(a) if "size" in studies else [a.base]
    marks = sorted({max(1, round(a.steps * f)) for f in CHECKPOINT_FRACTIONS})
    total = len(a.seeds) * (2 * len(sizes) + ("emergence" in studies) * len(marks)) + \
        ("finetune" in studies) * (1 + len(a.ft_lrs) * len(a.ft_seeds) * len(VARIANT_NAMES))
    done = [0]

    def say(text: str) -> None:  # one line per step: which of how many, and the time so far
        done[0] += 1
        if not a.quiet:
            print(f"[study-synth {done[0]}/{total}, {time.time() - t0:.0f} s] {text}", file=sys.stderr, flush=True)

    world = out / "world"
    if not (world / "bench.jsonl").exists():
        with interrupts.writing(world):
            make_world(world, a.entities, a.world_seed)
    sample = sample_bench(world / "bench.jsonl", a.per_group, out / "pss_sample.jsonl")
    knowledge = world_knowledge(world)
    report: dict = {"settings": {k: v for k, v in asdict(a).items()}, "world": knowledge,
                    "checkpoint_steps": marks, "premise": {}, "curves": {}, "emergence": {}, "size": {},
                    "frequency": {}, "finetune": {}}

    finals: dict[str, list[dict]] = {}
    for size in sizes:
        results, ablations = [], []
        for seed in a.seeds:
            run_dir = out / "models" / f"{size}-s{seed}"
            say(f"pretraining {size} seed {seed}")
            final = pretrain_run(world, run_dir, size, seed, a, marks if size == a.base else [a.steps])
            say(f"premise {size} seed {seed}: MLP ablation and PSS")
            ablations.append(ablation(final, sample, out / "pss" / f"{size}-s{seed}-ablation.json", a.device))
            results.append(pss_of(final, sample, out / "pss" / f"{size}-s{seed}-step{a.steps}.json", a))
            if size == a.base:
                report["curves"][str(seed)] = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()
                                               if l.strip()]
        finals[size] = results
        report["premise"][size] = premise(ablations, results, parameters(final), knowledge)

    base = finals[a.base]
    if "emergence" in studies:
        by_step = {}
        for step in marks:
            res = []
            for seed in a.seeds:
                ckpt = out / "models" / f"{a.base}-s{seed}" / f"step-{step:06d}"
                say(f"emergence: PSS of {a.base} seed {seed} at step {step}")
                res.append(pss_of(ckpt, sample, out / "pss" / f"{a.base}-s{seed}-step{step}.json", a))
            by_step[step] = res
        report["emergence"] = emergence(by_step)
    if "size" in studies and len(finals) > 1:
        report["size"] = size_study(finals, report["premise"])
    if "frequency" in studies:
        report["frequency"] = frequency(base)
    if "finetune" in studies:
        rows: dict = {}
        base_final = out / "models" / f"{a.base}-s{a.seeds[0]}" / f"step-{a.steps:06d}"  # the first seed's
        say("fine-tuning: the base model before")
        before = finetune_row(base_final, world, sample, out / "finetune" / "before", None, 0, 0.0, a)
        for lr in a.ft_lrs:
            for ft_seed in a.ft_seeds:
                for variant, name in VARIANT_NAMES.items():
                    say(f"fine-tuning {name} lr {lr:g} seed {ft_seed}")
                    work = out / "finetune" / f"lr{lr:g}" / f"s{ft_seed}" / name
                    rows.setdefault(f"{lr:g}", {}).setdefault(name, []).append(
                        finetune_row(base_final, world, sample, work, variant, ft_seed, lr, a))
        report["finetune"] = finetune(before, rows)
    report["seconds"] = round(time.time() - t0, 1)
    text = markdown(report)
    with interrupts.writing(out):
        files.write_whole(out / "study.json", json.dumps(report, indent=1))
        files.write_whole(out / "study.md", text)
    try:
        figures = plots(report, out)
    except ModuleNotFoundError:
        figures = ["none: install the plot extra (matplotlib)"]
    if not a.quiet:
        print(f"[study-synth] figures: {', '.join(map(str, figures))}", file=sys.stderr)
    if not a.quiet:
        print(text)
    return report


def world_knowledge(world: Path) -> dict:
    """The card's numbers (entities, facts, bits), from the world's own file."""
    summary = json.loads((world / "world.json").read_text())
    return knowledge([Entity(**e) for e in summary["entities"]], summary["values"])


# ---------------------------------------------------------------- command line


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def settings_from(options) -> StudySettings:
    """The preset's settings with every option the user gave in place of its value."""
    preset = getattr(options, "preset", None) or "default"
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    given = {f.name: getattr(options, f.name) for f in fields(StudySettings)
             if getattr(options, f.name, None) is not None}
    return StudySettings(**{**PRESETS[preset], **given, "preset": preset})


def main(options) -> None:
    a = settings_from(options)
    check(a)  # before --threads takes effect
    if a.threads:
        torch.set_num_threads(a.threads)
    run(a)


def add_arguments(p) -> None:
    d = StudySettings(out="")
    p.add_argument("--out", required=True, help="run folder (world, models, PSS results, tables, figures)")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="default: the full study (75 min measured on 2 cores); quick: a small one (518 s measured on 2 cores)")
    p.add_argument("--entities", type=int, help=f"evaluated entities, multiple of 6 (default {d.entities})")
    p.add_argument("--world-seed", type=int)
    p.add_argument("--sizes", help=f"LAYERSxHIDDEN, comma-separated (default {d.sizes})")
    p.add_argument("--base", help=f"size for emergence, frequency, fine-tuning (default {d.base})")
    p.add_argument("--seeds", type=_ints, help="pretraining seeds (default 0,1)")
    p.add_argument("--family", help="a model_type minipss loads (default llama)")
    p.add_argument("--steps", type=int, help=f"pretraining steps (default {d.steps})")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--per-group", type=int, help=f"PSS sample: concepts per tier and kind (default {d.per_group})")
    p.add_argument("--ratios", type=numbers, help="mask ratios (default 0.005,0.01,0.02,0.05)")
    p.add_argument("--skip-layers", type=int, help="layers never masked (default 0)")
    p.add_argument("--unrelated", choices=["any", "same-category"], help="unrelated draw (default same-category)")
    p.add_argument("--pss-seed", type=int, help="draws the unrelated concepts and random vectors")
    p.add_argument("--ft-seeds", type=_ints, help="fine-tuning seeds (default 0,1,2)")
    p.add_argument("--ft-lrs", type=numbers, help="fine-tuning learning rates (default 0.001,0.003)")
    p.add_argument("--ft-steps", type=int)
    p.add_argument("--studies", help=f"which to run besides the premise (default {d.studies})")
    p.add_argument("--threads", type=int, help="torch threads (0: torch's default)")
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true", default=None)
