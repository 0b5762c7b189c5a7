"""The paper's claims tested on a synthetic world where we set the causes (`minipss study-synth`).

    minipss study-synth --out RUN [--preset quick|default] [any option below, to change the preset]

Every PSS here runs the real-model protocol (`pss_of`: split-half by fact, cloze, the graded outcome,
uniform, matched and pseudo controls). First the premise the method rests on, per model size: are the
facts in the MLPs (accuracy per tier before and with every MLP zeroed, tested over entities), and do the
located value vectors hurt their own concept beyond magnitude-matched random vectors (paired tests over
concepts at each ratio)? Then the instrument itself (`calibration.py`: its power on the trained models and
its false-positive rate on two nulls), and the claims, each stated only when its test detects it:

- emergence (Figure 4): the base size at half of training against the end, a test over pretraining seeds;
- size (Table 1): the smallest size against the largest, both trained alike, a test over seeds;
- frequency (Figure 5): the tiers (exact document counts) of the base size, a two-sample test over concepts;
- fine-tuning (Table 2): new documents about low-tier entities the model partly knows, FT-FV/PV/CV/RV, each
  at the learning rate a sweep picks on a held-out third of those entities, compared on the rest.

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
from .calibration import calibrate
from .findings import TIERS, emergence, finetune, frequency, markdown, pick_lr, plots, premise, size_study
from .world import Entity, finetuned_count, knowledge, make_world


VARIANT_NAMES = {"fv": "FT-FV", "pv": "FT-PV", "cv": "FT-CV", "rv": "FT-RV"}
CHECKPOINT_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)  # of training: late checkpoints, not only early
EMERGENCE_FROM = 1 / 2  # emergence compares this checkpoint with the end: both have learned (README)
TUNING_EVERY = 3  # every third fine-tuned entity picks the learning rates; the others compare the variants


@dataclass
class StudySettings:
    """Every choice of `minipss study-synth` (its options, same names); the defaults are the default
    preset, `PRESETS` holds the others."""
    out: str
    preset: str = "default"
    entities: int = 1200  # evaluated entities (multiple of 6): 6,000 facts
    world_seed: int = 0
    sizes: str = "4x64,4x128"  # LAYERSxHIDDEN (d_ff 4 x hidden), comma-separated: both learn the world
    base: str = "4x64"  # the size of emergence, frequency, calibration and fine-tuning
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # pretraining seeds (init and data order)
    family: str = "llama"
    steps: int = 1500  # about 9 passes over the 1,200-entity world at batch 32
    lr: float = 3e-3
    batch_size: int = 32
    per_group: int = 15  # concepts per tier and kind in the PSS sample (90 concepts: the real-model design)
    ratios: list[float] = field(default_factory=lambda: [0.01, 0.05])
    skip_layers: int = 0  # every layer maskable: layer 0's MLP holds facts too
    unrelated: str = "same-category"  # t* from the concept's own kind (METHOD.md §2)
    pss_seed: int = 0  # draws the unrelated concepts, pseudo-concepts and random vectors
    null_seeds: int = 2  # how many base models (the first seeds, at most all) also run the calibration's nulls
    calibration_draws: int = 50  # real-model studies drawn per condition and number of concepts
    ft_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ft_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])  # the sweep (seed ft_seeds[0])
    ft_steps: int = 60
    studies: str = "emergence,size,frequency,calibration,finetune"
    threads: int = 0  # torch threads (0: torch's default)
    device: str = "cpu"
    quiet: bool = False


PRESETS = {
    "default": {},  # the dataclass defaults (README: measured time per part)
    "quick": {"entities": 600, "sizes": "4x32,4x64", "base": "4x64", "seeds": [0, 1], "steps": 1000,
              "per_group": 5, "null_seeds": 1, "ft_seeds": [0], "ft_lrs": [1e-3, 3e-3], "ft_steps": 40},
}
STUDIES = ("emergence", "size", "frequency", "calibration", "finetune")
# what the saved steps in --out depend on without naming it in their paths: a rerun must share these
RECORD = ("entities", "world_seed", "family", "steps", "lr", "batch_size", "per_group", "ratios", "skip_layers",
          "unrelated", "pss_seed", "ft_steps")  # calibration_draws and null_seeds name nothing saved: free to change


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
    checks.integer("--per-group", a.per_group, 3, a.entities // 6)  # >= 17 concepts for the pseudo-concept control
    checks.integer("--null-seeds", a.null_seeds, 0)
    checks.integer("--calibration-draws", a.calibration_draws, 1)
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


# how every PSS of the study is run (`pss_settings`): a folder made by another protocol is refused, not mixed
PROTOCOL = "cloze + p(correct), split-half by fact, uniform + matched + pseudo controls"


def record_of(a: StudySettings) -> dict:
    return {"command": "study-synth", "protocol": PROTOCOL, **{k: getattr(a, k) for k in RECORD}}


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
    """Where the facts are: per tier and ablation, right answers (cloze) with nothing zeroed ("before"),
    with every MLP zeroed ("all_mlps_zeroed") and with one layer's MLP zeroed ("mlp_<l>_zeroed"): in all
    (`correct` of `n`) and per concept of the tier (`per_concept`, in benchmark order). Kept."""
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
        mine = [c for c in concepts if c.tier == tier]
        qs = [q for c in mine for q in c.mcq]
        row[tier] = {}
        for name, mask in masks.items():
            answers = mcq_answers(model, tok, qs, "cloze", None if mask is None else mask.to(model.device), 64)
            right = [x == q.answer for x, q in zip(answers, qs)]
            per, start = [], 0
            for c in mine:
                per.append(sum(right[start:start + len(c.mcq)]))
                start += len(c.mcq)
            row[tier][name] = {"accuracy": sum(right) / len(qs), "correct": sum(right), "n": len(qs),
                               "per_concept": per, "questions": [len(c.mcq) for c in mine]}
    with interrupts.writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        files.write_whole(out, json.dumps(row))
    interrupts.pause_point()
    return row


def pss_settings(a: StudySettings) -> Settings:
    """The real-model protocol (the `minipss study` defaults' kind of result): cloze with its graded outcome,
    split-half by fact, the uniform, magnitude-matched and pseudo-concept controls; the study's ratios,
    layers and unrelated draw."""
    return Settings(mode="cloze", ratios=a.ratios, skip_layers=a.skip_layers, seed=a.pss_seed, control=True,
                    matched_control=True, pseudo_control=True, split_half=True, unrelated=a.unrelated,
                    device=a.device, batch_size=64, dtype="float32")  # models too small for bf16 to pay (METHOD.md §10)


def pss_of(model_dir, bench: Path, out: Path, a: StudySettings) -> dict:
    """`run_pss` with `pss_settings`; the result file is kept and reused."""
    if out.exists():
        return json.loads(out.read_text())
    return run_pss(model_dir, bench, out, pss_settings(a), quiet=True)


def swapped_bench(sample: Path, out: Path) -> Path:
    """The `swapped` null of the calibration: per concept A of the sample, a chimera of A and its partner B
    (the next concept of A's tier and kind, in sample order, cyclically): B's questions on A's facts 1, 3,
    5, ... and A's on facts 2, 4, ... (both phrasings of each), so split-half by fact (METHOD.md §4) puts B's
    questions in one half and A's in the other, and every question is scored under a mask located on the
    other concept. Tier and kind are A's (and B's)."""
    if out.exists():
        return out
    concepts = [json.loads(l) for l in sample.read_text(encoding="utf-8").splitlines() if l.strip()]
    groups: dict = {}
    for c in concepts:
        groups.setdefault((c["tier"], c["category"]), []).append(c)
    lines = []
    for c in concepts:
        group = groups[(c["tier"], c["category"])]
        partner = group[(group.index(c) + 1) % len(group)]
        facts = list(dict.fromkeys(q["fact"] for q in c["mcq"]))
        mcq = [{**q, "fact": f"{source['concept']}: {fact}"}
               for n, fact in enumerate(facts) for source in [partner if n % 2 == 0 else c]
               for q in source["mcq"] if q["fact"] == fact]
        lines.append(json.dumps({**c, "concept": f"{c['concept']} / {partner['concept']}", "mcq": mcq, "open": []}))
    with interrupts.writing(out):
        files.write_whole(out, "".join(l + "\n" for l in lines))
    return out


def finetune_row(base: Path, world: Path, sample: Path, work: Path, variant: str | None, seed: int, lr: float,
                 a: StudySettings) -> dict:
    """Fine-tune `base` on new.jsonl (unless `variant` is None: the base model) and measure, per
    fine-tuned entity, MCQ and open accuracy, and MCQ accuracy on the sample's other entities (forgetting).
    Kept in `work/row.json`."""
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
    row = {"mcq": [sum(x) / len(x) for x in per_mcq], "open": [sum(x) / len(x) for x in per_open], "old_acc": old,
           "concepts": [c.name for c in tuned]}
    with interrupts.writing(saved):
        saved.parent.mkdir(parents=True, exist_ok=True)
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
    middle = max(1, round(a.steps * EMERGENCE_FROM))
    nulls = a.seeds[:a.null_seeds] if "calibration" in studies else []
    sweep, finals_ft = len(a.ft_lrs) * len(VARIANT_NAMES), (len(a.ft_seeds) - 1) * len(VARIANT_NAMES)
    total = len(a.seeds) * (2 * len(sizes) + ("emergence" in studies)) + 2 * len(nulls) + \
        ("finetune" in studies) * (1 + sweep + finals_ft)
    done, parts = [0], {}

    def say(text: str) -> None:  # one line per step: which of how many, and the time so far
        done[0] += 1
        if not a.quiet:
            print(f"[study-synth {done[0]}/{total}, {time.time() - t0:.0f} s] {text}", file=sys.stderr, flush=True)

    def timed(part: str, work):  # seconds per part of the study, this invocation (README)
        start = time.time()
        value = work()
        parts[part] = round(parts.get(part, 0.0) + time.time() - start, 1)
        return value

    world = out / "world"
    if not (world / "bench.jsonl").exists():
        with interrupts.writing(world):
            make_world(world, a.entities, a.world_seed)
    sample = sample_bench(world / "bench.jsonl", a.per_group, out / "pss_sample.jsonl")
    knowledge = world_knowledge(world)
    report: dict = {"settings": {k: v for k, v in asdict(a).items()}, "world": knowledge,
                    "checkpoint_steps": marks, "premise": {}, "curves": {}, "emergence": {}, "size": {},
                    "frequency": {}, "calibration": {}, "finetune": {}}

    finals: dict[str, list[dict]] = {}
    for size in sizes:
        results, ablations = [], []
        for seed in a.seeds:
            run_dir = out / "models" / f"{size}-s{seed}"
            say(f"pretraining {size} seed {seed}")
            final = timed("pretraining", lambda: pretrain_run(world, run_dir, size, seed, a,
                                                              marks if size == a.base else [a.steps]))
            say(f"premise {size} seed {seed}: MLP ablation and PSS")
            ablations.append(timed("premise: MLP ablation", lambda: ablation(
                final, sample, out / "pss" / f"{size}-s{seed}-ablation.json", a.device)))
            results.append(timed("PSS of the final models", lambda: pss_of(
                final, sample, out / "pss" / f"{size}-s{seed}-step{a.steps}.json", a)))
            if size == a.base:
                report["curves"][str(seed)] = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()
                                               if l.strip()]
        finals[size] = results
        report["premise"][size] = premise(ablations, results, parameters(final), knowledge)

    base = finals[a.base]
    if "emergence" in studies:
        early = []
        for seed in a.seeds:
            ckpt = out / "models" / f"{a.base}-s{seed}" / f"step-{middle:06d}"
            say(f"emergence: PSS of {a.base} seed {seed} at step {middle}")
            early.append(timed("emergence: PSS at half of training", lambda: pss_of(
                ckpt, sample, out / "pss" / f"{a.base}-s{seed}-step{middle}.json", a)))
        report["emergence"] = emergence({middle: early, a.steps: base}, report["curves"])
    if "size" in studies and len(finals) > 1:
        report["size"] = size_study(finals, report["premise"])
    if "frequency" in studies:
        report["frequency"] = frequency(base)
    if "calibration" in studies:
        untrained, swapped = [], []
        chimeras = swapped_bench(sample, out / "swapped_sample.jsonl")
        for seed in nulls:
            run_dir = out / "models" / f"{a.base}-s{seed}"
            say(f"calibration: PSS of {a.base} seed {seed} untrained")
            untrained.append(timed("calibration: the two nulls' PSS", lambda: pss_of(
                run_dir / "init", sample, out / "pss" / f"{a.base}-s{seed}-init.json", a)))
            say(f"calibration: PSS of {a.base} seed {seed} on swapped concepts")
            swapped.append(timed("calibration: the two nulls' PSS", lambda: pss_of(
                run_dir / f"step-{a.steps:06d}", chimeras, out / "pss" / f"{a.base}-s{seed}-swapped.json", a)))
        report["calibration"] = timed("calibration: drawing the design", lambda: calibrate(
            {"trained": base, "untrained": untrained, "swapped": swapped}, a.calibration_draws, a.pss_seed))
    if "finetune" in studies:
        report["finetune"] = timed("fine-tuning", lambda: finetune_study(world, sample, out, a, say))
    report["seconds"] = round(time.time() - t0, 1)
    report["seconds_by_part"] = parts
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


def finetune_study(world: Path, sample: Path, out: Path, a: StudySettings, say) -> dict:
    """Table 2, fairly: every variant trains the first seed's base model at each learning rate of the sweep
    (fine-tuning seed `ft_seeds[0]`); the rate that gives the held-out tuning entities (every TUNING_EVERY-th
    fine-tuned entity) the best MCQ accuracy is the variant's, and the variants are compared at their own
    rates, over the fine-tuning seeds, on the other entities."""
    base_final = out / "models" / f"{a.base}-s{a.seeds[0]}" / f"step-{a.steps:06d}"
    run = lambda variant, lr, seed: finetune_row(base_final, world, sample,
                                                 out / "finetune" / f"lr{lr:g}" / f"s{seed}" / VARIANT_NAMES[variant],
                                                 variant, seed, lr, a)
    say("fine-tuning: the base model before")
    before = finetune_row(base_final, world, sample, out / "finetune" / "before", None, 0, 0.0, a)
    tuning = [k % TUNING_EVERY == 0 for k in range(len(before["concepts"]))]
    swept: dict = {}
    for variant, name in VARIANT_NAMES.items():
        for lr in a.ft_lrs:
            say(f"fine-tuning sweep: {name} lr {lr:g} seed {a.ft_seeds[0]}")
            swept.setdefault(name, {})[f"{lr:g}"] = run(variant, lr, a.ft_seeds[0])
    chosen = {name: pick_lr(rows, tuning) for name, rows in swept.items()}
    rows: dict = {}
    for variant, name in VARIANT_NAMES.items():
        for seed in a.ft_seeds:
            if seed != a.ft_seeds[0]:
                say(f"fine-tuning {name} at its lr {chosen[name]} seed {seed}")
            rows.setdefault(name, []).append(run(variant, float(chosen[name]), seed))
    return finetune(before, swept, chosen, rows, tuning)


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
                   help="default: the full study (README: its time per part on 2 cores); quick: a small one")
    p.add_argument("--entities", type=int, help=f"evaluated entities, multiple of 6 (default {d.entities})")
    p.add_argument("--world-seed", type=int)
    p.add_argument("--sizes", help=f"LAYERSxHIDDEN, comma-separated (default {d.sizes})")
    p.add_argument("--base", help=f"size for emergence, frequency, fine-tuning (default {d.base})")
    p.add_argument("--seeds", type=_ints, help="pretraining seeds (default 0,1,2,3,4)")
    p.add_argument("--family", help="a model_type minipss loads (default llama)")
    p.add_argument("--steps", type=int, help=f"pretraining steps (default {d.steps})")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--per-group", type=int, help=f"PSS sample: concepts per tier and kind (default {d.per_group})")
    p.add_argument("--ratios", type=numbers, help="mask ratios (default 0.01,0.05)")
    p.add_argument("--skip-layers", type=int, help="layers never masked (default 0)")
    p.add_argument("--unrelated", choices=["any", "same-category"], help="unrelated draw (default same-category)")
    p.add_argument("--pss-seed", type=int, help="draws the unrelated concepts, pseudo-concepts and random vectors")
    p.add_argument("--null-seeds", type=int, help=f"base models that also run the calibration's nulls (default {d.null_seeds})")
    p.add_argument("--calibration-draws", type=int,
                   help=f"real-model studies drawn per condition (default {d.calibration_draws})")
    p.add_argument("--ft-seeds", type=_ints, help="fine-tuning seeds (default 0,1,2)")
    p.add_argument("--ft-lrs", type=numbers, help="fine-tuning learning rates each variant's is picked from "
                   "(default 0.001,0.003,0.01)")
    p.add_argument("--ft-steps", type=int)
    p.add_argument("--studies", help=f"which to run besides the premise (default {d.studies})")
    p.add_argument("--threads", type=int, help="torch threads (0: torch's default)")
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true", default=None)
