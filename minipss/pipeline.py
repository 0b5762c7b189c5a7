"""`minipss pss` end to end: benchmark -> coefficients -> masks -> masked scoring -> PSS -> result file.

Work is saved as it goes in `<out>.work/` (the coefficients, then one line per finished cell), so an
interrupted run resumes where it stopped and gives the result an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .benchmark import Concept, load_benchmark, unrelated_sets
from . import engine
from .method import collect_coefficients, locate, mask_for, random_ranking, ranking, unrelated_mean
from .report import build_result, write_result
from .scoring import mcq_answers
from .shard import Shard

PAPER_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
SWEEP_RATIOS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Settings:
    """Every choice the result depends on; all are written into the result file."""
    mode: str = "generate"  # generate | logits | cloze (spec §5)
    ratios: list[float] = field(default_factory=lambda: list(PAPER_RATIOS))
    skip_layers: int = 5  # layers 0..skip-1 are never masked (§4.1)
    seed: int = 0  # draws the unrelated concepts and the random-control vectors
    concepts: int | None = None  # keep the first N concepts of the file
    n_unrelated: int = 5  # concepts whose questions form t* (§3.2)
    control: bool = False  # also mask random vectors, same count per layer (the reviewers' control)
    ablation: str = "zero"  # zero | mean: masked m_j set to 0 (§4.1) or to their mean on unrelated questions
    token_rule: str = "content"  # which tokens the coefficient mean covers (spec §3)
    cloze_mean: bool = False  # cloze: mean instead of sum of option-token log-probs
    early_stop: bool = True  # generate: stop a row once its letter is decided (same answers)
    engine: bool = True  # score all of a concept's masks (and the baseline) together, sharing work (same answers)
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        self.ratios = [float(r) for r in self.ratios]  # result keys are str(float): "0.1", "0.0"

    def fingerprint(self, model: str, bench: Path) -> str:
        """What a resumed run must share with the saved work (ratios and control may grow)."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("ratios", "control", "batch_size", "device", "engine", "early_stop")}
        keep.update(model=str(Path(model).resolve()), bench=hashlib.sha256(bench.read_bytes()).hexdigest())
        return json.dumps(keep, sort_keys=True)


class Progress:
    """One line per step on stderr with the elapsed and remaining time."""

    def __init__(self, total: int, what: str, quiet: bool = False):
        self.total, self.what, self.quiet, self.done, self.start = total, what, quiet, 0, time.time()

    def step(self, label: str = "") -> None:
        self.done += 1
        if self.quiet:
            return
        spent = time.time() - self.start
        left = spent / self.done * (self.total - self.done)
        print(f"[{self.what} {self.done}/{self.total}] {label} {spent:.0f}s elapsed, ~{left:.0f}s left",
              file=sys.stderr, flush=True)


class WorkDir:
    """`<out>.work/`: settings, coefficients (safetensors) and finished cells (JSON lines)."""

    def __init__(self, out: Path, fingerprint: str, rank: int = 0):
        self.path = out.parent / (out.name + ".work")
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = self.path / "settings.json"
        if stamp.exists() and stamp.read_text() != fingerprint:
            raise ValueError(f"{self.path} holds work made with other settings; remove it or choose another --out")
        if rank == 0:
            stamp.write_text(fingerprint)
        self.rank = rank
        self.cells_file = self.path / ("cells.jsonl" if rank == 0 else f"cells.rank{rank}.jsonl")
        self.cells = {}
        for file in sorted(self.path.glob("cells*.jsonl")):  # every shard's, so any split resumes
            for line in file.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by an interruption
                    continue
                self.cells[row["key"]] = row["correct"]

    def coefficients(self, compute, name: str = "coefficients") -> torch.Tensor:
        file = self.path / f"{name}.safetensors"
        if file.exists():
            return load_file(str(file))["coefficients"]
        value = compute()
        if self.rank == 0:
            save_file({"coefficients": value.contiguous()}, str(file) + ".tmp")
            os.replace(str(file) + ".tmp", file)
        return value

    def save_cell(self, key: str, correct: list[bool]) -> None:
        with open(self.cells_file, "a") as f:
            f.write(json.dumps({"key": key, "correct": correct}) + "\n")
        self.cells[key] = correct


def questions_of(concepts: list[Concept], i: int, others: list[int]):
    """t (concept i's MCQs) followed by t* (the MCQs of its unrelated concepts)."""
    return concepts[i].mcq + [q for j in others for q in concepts[j].mcq]


def engine_groups(todo: list[int], others: list[list[int]], counts: list[int], max_questions: int):
    """Consecutive concepts whose questions (their own and their unrelated concepts') number at most
    `max_questions` together; a concept alone may exceed it."""
    group, seen = [], set()
    for i in todo:
        more = seen | {i, *others[i]}
        if group and sum(counts[j] for j in more) > max_questions:
            yield group
            group, more = [], {i, *others[i]}
        group.append(i)
        seen = more
    if group:
        yield group


def run_pss(model_dir, bench, out, settings: Settings | None = None, quiet: bool = False) -> dict:
    """Run the whole method and write `out` (JSON) and `out` with .csv; returns the result dict."""
    from . import load_model, load_tokenizer

    s = settings or Settings()
    t0 = time.time()
    bench, out = Path(bench), Path(out)
    concepts = load_benchmark(bench)
    if s.concepts:
        concepts = concepts[: s.concepts]
        if len(concepts) < s.n_unrelated + 1:
            raise ValueError(f"--concepts {s.concepts}: need at least {s.n_unrelated + 1} concepts")
    others = unrelated_sets(concepts, s.n_unrelated, s.seed)
    shard = Shard(s.device)
    model = load_model(model_dir, dtype=getattr(torch, s.dtype), device=shard.device)
    tok = load_tokenizer(model_dir)
    L = model.config.num_layers
    if s.skip_layers >= L:
        raise ValueError(f"--skip-layers {s.skip_layers} leaves nothing to mask in a model of {L} layers")
    work = WorkDir(out, s.fingerprint(model_dir, bench), shard.rank)
    score = lambda qs, mask=None: [a == q.answer for a, q in zip(
        mcq_answers(model, tok, qs, s.mode, mask, s.batch_size, s.early_stop, s.cloze_mean), qs)]
    mine = [i for i in range(len(concepts)) if shard.mine(i)]

    def my_coefficients(absolute=True):
        part = collect_coefficients(model, tok, [concepts[i] for i in mine], s.token_rule, s.batch_size, absolute)
        parts = {i: part[n] for n, i in enumerate(mine)}
        for other in shard.gather(parts):
            parts.update(other)
        return torch.stack([parts[i] for i in range(len(concepts))])

    if s.ablation not in ("zero", "mean"):
        raise ValueError(f"unknown ablation {s.ablation!r}; choose zero or mean")
    coeffs = work.coefficients(my_coefficients)
    signed = work.coefficients(lambda: my_coefficients(False), "signed_means") if s.ablation == "mean" else None
    timing = {"coefficients": time.time() - t0}

    t1 = time.time()
    missing = [i for i in mine if f"baseline|{i}" not in work.cells]
    if s.engine and missing:  # the baseline is one more mask (all ones): every missing concept at once
        qs = [q for i in missing for q in concepts[i].mcq]
        ones = torch.ones(1, L, model.config.intermediate_size, device=model.device, dtype=model.dtype)
        base = engine.answers(model, tok, qs, ones, s.skip_layers, s.mode, s.cloze_mean, s.early_stop)[0]
        for i in missing:
            n = len(concepts[i].mcq)
            work.save_cell(f"baseline|{i}", [a == q.answer for a, q in zip(base[:n], concepts[i].mcq)])
            base = base[n:]
    for i in missing if not s.engine else ():
        work.save_cell(f"baseline|{i}", score(concepts[i].mcq))
    timing["baseline"] = time.time() - t1

    counts = [len(c.mcq) for c in concepts]
    kinds = ["located"] + (["random"] if s.control else [])
    todo = [(k, i, r) for i in mine for r in s.ratios for k in kinds if f"{k}|{i}|{r}" not in work.cells]
    progress = Progress(len(todo), "masked", quiet)
    t2 = time.time()

    def cells_of(i):
        """Concept i's missing cells and their masks."""
        cells = [(k, r) for k, j, r in todo if j == i]
        scores = locate(coeffs[i], unrelated_mean(coeffs, counts, others[i]))
        orders = {"located": ranking(scores), "random": random_ranking(scores.shape, s.seed * 1_000_003 + i)}
        fill = None if signed is None else unrelated_mean(signed, counts, others[i])
        masks = torch.stack([mask_for(orders[k], r, s.skip_layers, fill) for k, r in cells])
        return cells, masks.to(device=model.device, dtype=model.dtype)

    # the engine takes several concepts at once (their questions overlap: t* of one is t of others), so
    # the blocks below skip run once per question for the group, not once per concept
    for group in engine_groups(sorted({i for _, i, _ in todo}), others, counts, 256 if s.engine else 1):
        pool, which, cells, masks = {}, [], [], []
        for i in group:
            c, m = cells_of(i)
            keys = [(j, k) for j in [i] + others[i] for k in range(counts[j])]  # questions_of's order
            which += [[pool.setdefault(key, len(pool)) for key in keys]] * len(c)
            cells += [(k, i, r) for k, r in c]
            masks.append(m)
        masks = torch.cat(masks)
        qs = [concepts[j].mcq[k] for j, k in pool]
        if s.engine:  # all of this group's masks at once
            answers = engine.answers(model, tok, qs, masks, s.skip_layers, s.mode, s.cloze_mean, s.early_stop,
                                     which)
            results = [[a == qs[q].answer for a, q in zip(ans, w)] for ans, w in zip(answers, which)]
        else:
            results = [score([qs[q] for q in w], m) for w, m in zip(which, masks)]
        for (k, i, r), correct in zip(cells, results):
            work.save_cell(f"{k}|{i}|{r}", correct)
            progress.step(f"{concepts[i].name} r={r} {k}")
    timing["masked"] = time.time() - t2
    timing["total"] = time.time() - t0

    cells = {}
    for part in shard.gather(work.cells):
        cells.update(part)
    result = build_result(str(model_dir), str(bench), {**asdict(s), "processes": shard.world}, concepts,
                          others, cells, timing)
    if shard.main:
        write_result(result, out)
    return result
