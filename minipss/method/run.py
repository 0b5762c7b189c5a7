"""`minipss pss` end to end: benchmark -> coefficients -> masks -> masked scoring -> PSS -> result file.

`run_pss` checks every input before any work, loads, and calls `measure`, which follows the paper's steps
(`coefficients_step`, `baseline_step`, `masked_step`) on a loaded model; the §5 experiment calls `measure`
on concepts it holds in memory. Work is saved as it goes in `<out>.work/` (the coefficients, then one line per finished cell), so an
interrupted run resumes where it stopped and gives the result an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import load_model, load_tokenizer
from ..checks import check_device, check_outputs, model_inputs, ratios
from ..model.fastest import resolve_dtype
from ..model.families import read_config
from . import many_masks
from .benchmark import Concept, load_benchmark, questions_of, unrelated_sets
from .fingerprint import differences, file_digest, model_digest, short
from .locate import (KINDS, LOCATORS, TOKEN_RULES, ConceptStats, cell_masks, group_stats, question_coefficients,
                     question_groups, set_magnitudes)
from .progress import REPORT_EVERY, Progress
from .prompts import coefficient_prompt, mcq_prompt
from .report import build_result, cell_key, parse_cell_key, write_result
from .scores import mean
from .scoring import GENERATE_TOKENS, MODES, cloze_tokens, letter_vocab, mcq_answers
from .shard import Shard


PAPER_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
SWEEP_RATIOS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Settings:
    """Every choice the result depends on; all are written into the result file."""
    mode: str = "generate"  # generate | logits | cloze (METHOD.md §5)
    ratios: list[float] = field(default_factory=lambda: list(PAPER_RATIOS))
    skip_layers: int = 5  # layers 0..skip-1 are never masked (§4.1)
    seed: int = 0  # draws the unrelated concepts and the random-control vectors
    concepts: int | None = None  # keep the first N concepts of the file
    n_unrelated: int = 5  # concepts whose questions form t* (§3.2)
    control: bool = False  # also mask random vectors, same count per layer (the reviewers' control)
    matched_control: bool = False  # also mask random vectors of the located ones' magnitudes (METHOD.md §4)
    split_half: bool = False  # locate on one half of the questions, score on the other (METHOD.md §4)
    locator: str = "diff"  # diff (Eq. 5) | zscore (METHOD.md §4)
    ablation: str = "zero"  # zero | mean: masked m_j set to 0 (§4.1) or to their mean on unrelated questions
    token_rule: str = "content"  # which tokens the coefficient mean covers (METHOD.md §3)
    cloze_mean: bool = False  # cloze: mean instead of sum of option-token log-probs
    early_stop: bool = True  # generate: stop a row once its letter is decided (same answers)
    engine: bool = True  # score all of a concept's masks (and the baseline) together, sharing work (same answers)
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"  # auto: bf16 where it is measured faster (METHOD.md §10), resolved before any work
    dtype_choice: str = ""  # why this dtype (written by run_pss)

    def __post_init__(self):
        self.ratios = [float(r) for r in self.ratios]  # result keys are str(float): "0.1", "0.0"

    def fingerprint(self, model, bench: Path) -> dict:
        """What a resumed run must share with the saved work: the contents of the model folder and of the
        benchmark, and every setting that changes an answer (ratios and the controls may grow; batch size,
        device, engine and early stop give the same answers). Split-half and the locator count only when
        not their defaults, so work saved before they existed still resumes."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("ratios", "control", "matched_control", "batch_size", "device", "engine", "early_stop",
                             "dtype_choice")}
        if not self.split_half:
            del keep["split_half"]
        if self.locator == "diff":
            del keep["locator"]
        keep.update({f"model {k}": v for k, v in model_digest(model).items()})
        keep["bench"] = file_digest(bench)
        return keep

    def check(self) -> None:
        """Refuse out-of-range values, naming the option, before any work."""
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        ratios("--ratios", self.ratios)
        if self.skip_layers < 0:
            raise ValueError(f"--skip-layers {self.skip_layers}: must be 0 or more")
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"--seed {self.seed}: must be in [0, 2**32)")
        if self.concepts is not None and self.concepts < self.n_unrelated + 1:
            raise ValueError(f"--concepts {self.concepts}: must be at least {self.n_unrelated + 1} "
                             f"(each concept is compared with {self.n_unrelated} others); leave it out for all")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size}: must be 1 or more")
        if self.ablation not in ("zero", "mean"):
            raise ValueError(f"--ablation {self.ablation!r}: choose zero or mean")
        if self.locator not in LOCATORS:
            raise ValueError(f"--locator {self.locator!r}: choose one of {', '.join(LOCATORS)}")
        if self.token_rule not in TOKEN_RULES:
            raise ValueError(f"--token-rule {self.token_rule!r}: choose one of {', '.join(TOKEN_RULES)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose auto, float32, bfloat16 or float16")
        check_device(self.device)


def context_length(config) -> int | None:
    """The longest sequence the model was built for, when its config says (each family reads its key)."""
    value = config.max_positions
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_prompt_lengths(concepts: list[Concept], tok, config, model_dir, mode: str | None,
                         bench: Path) -> None:
    """Refuse, before any work, a question whose prompt (plus what is generated after it) would run past
    the model's `max_position_embeddings`. `mode` None checks only the coefficient prompts."""
    limit = context_length(config)
    if limit is None:
        return
    for c in concepts:
        for k, q in enumerate(c.mcq):
            lengths = {"coefficient": len(tok.encode(coefficient_prompt(q)))}
            if mode == "generate":
                lengths["generate"] = len(tok.encode(mcq_prompt(q))) + GENERATE_TOKENS
            elif mode == "logits":
                lengths["logits"] = len(tok.encode(mcq_prompt(q)))
            elif mode == "cloze":
                ctx, options = cloze_tokens(tok, q)
                lengths["cloze"] = len(ctx) + max(len(o) for o in options)
            for what, n in lengths.items():
                if n > limit:
                    raise ValueError(
                        f"{bench}:{c.line}: concept {c.name!r} mcq[{k}]: its {what} prompt needs {n} positions; "
                        f"the model reads at most {limit} (max_position_embeddings in {Path(model_dir) / 'config.json'})")


class WorkDir:
    """`<out>.work/`: settings, coefficients (safetensors) and finished cells (JSON lines).

    `settings.json` records what the work was computed from (see `Settings.fingerprint`) and a run with
    anything different is refused. Each cell line and each coefficient file also carries the short id of
    that record, so work from another record (say, after `settings.json` was deleted) is recomputed,
    never reused; so are damaged pieces (a truncated file, a malformed line, a cell of the wrong length)."""

    def __init__(self, out: Path, fingerprint: dict, rank: int = 0):
        self.path = out.parent / (out.name + ".work")
        self.path.mkdir(parents=True, exist_ok=True)
        self.run = short(fingerprint)
        stamp = self.path / "settings.json"
        if stamp.exists():
            try:
                saved = json.loads(stamp.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                saved = None
            diff = differences(saved, fingerprint)
            if diff:
                raise ValueError(f"{self.path} holds work made with other settings or inputs ("
                                 + "; ".join(diff) + f"); to start over, remove the folder {self.path}, "
                                 "or choose another --out")
        if rank == 0:
            tmp = stamp.with_name("settings.json.tmp")
            tmp.write_text(json.dumps(fingerprint, sort_keys=True, indent=1))
            os.replace(tmp, stamp)
        self.rank = rank
        self.cells_file = self.path / ("cells.jsonl" if rank == 0 else f"cells.rank{rank}.jsonl")
        self.cells = {}
        for file in sorted(self.path.glob("cells*.jsonl")):  # every shard's, so any split resumes
            for line in file.read_bytes().decode("utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by an interruption
                    continue
                if (isinstance(row, dict) and row.get("run") == self.run and isinstance(row.get("key"), str)
                        and isinstance(row.get("correct"), list)
                        and all(isinstance(x, bool) for x in row["correct"])):
                    self.cells[row["key"]] = row["correct"]
        # a line cut off by a kill has no newline: end it, so the next cell starts a line of its own
        if self.cells_file.is_file() and self.cells_file.stat().st_size:
            with open(self.cells_file, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(self.cells_file, "ab") as g:
                        g.write(b"\n")

    def keep_cells(self, expected_length) -> None:
        """Drop cells whose list of answers does not have the length this run expects (recomputed)."""
        self.cells = {k: v for k, v in self.cells.items() if expected_length(k) == len(v)}

    def coefficients(self, compute, name: str = "coefficients", shape=None) -> torch.Tensor:
        file = self.path / f"{name}.safetensors"
        if file.exists():
            try:
                with safe_open(str(file), framework="pt") as f:
                    same = (f.metadata() or {}).get("run") == self.run
                    value = f.get_tensor("coefficients") if same else None
            except Exception:  # truncated or damaged: computed again
                value = None
            if value is not None and (shape is None or tuple(value.shape) == tuple(shape)):
                return value
        value = compute()
        if self.rank == 0:
            save_file({"coefficients": value.contiguous()}, str(file) + ".tmp", metadata={"run": self.run})
            os.replace(str(file) + ".tmp", file)
        return value

    def save_cell(self, key: str, correct: list[bool]) -> None:
        with open(self.cells_file, "a") as f:
            f.write(json.dumps({"key": key, "correct": correct, "run": self.run}) + "\n")
        self.cells[key] = correct


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


class Unsaved:
    """Work kept in memory only, for a caller that saves its own results (the §5 experiment): the part
    of `WorkDir` that `measure` uses."""

    def __init__(self):
        self.cells: dict[str, list[bool]] = {}

    def coefficients(self, compute, name: str = "coefficients", shape=None) -> torch.Tensor:
        return compute()

    def save_cell(self, key: str, correct: list[bool]) -> None:
        self.cells[key] = correct

    def keep_cells(self, expected_length) -> None:
        pass  # nothing saved, nothing stale


def run_pss(model_dir, bench, out, settings: Settings | None = None, quiet: bool = False,
            report_every: float = REPORT_EVERY) -> dict:
    """`minipss pss`: check everything, load, `measure`, then write `out` (JSON) and `out` with .csv;
    returns the result dict. `--dtype auto` is resolved here (`fastest.resolve_dtype`); the result and
    the work folder record the dtype used."""
    s = settings or Settings()
    t0 = time.time()
    bench, out = Path(bench), Path(out)
    # every bad input is refused before any work or any file written: settings, paths, benchmark, config,
    # tokenizer, prompts, weights
    s.check()
    check_outputs(out, [bench] + model_inputs(model_dir))
    concepts = load_benchmark(bench)[: s.concepts]
    others = unrelated_sets(concepts, s.n_unrelated, s.seed)
    few = [c for c in concepts if len(c.mcq) < 2]
    if s.split_half and few:
        raise ValueError(f"{bench}:{few[0].line}: concept {few[0].name!r} has {len(few[0].mcq)} question; "
                         "--split-half needs at least 2 per concept (one per half)")
    config = read_config(model_dir)
    if s.skip_layers >= config.num_layers:
        raise ValueError(f"--skip-layers {s.skip_layers} leaves nothing to mask in a model of "
                         f"{config.num_layers} layers")
    tok = load_tokenizer(model_dir)
    check_prompt_lengths(concepts, tok, config, model_dir, s.mode, bench)
    if s.mode == "logits":
        letter_vocab(tok)  # refuses a tokenizer without single-token letters
    shard = Shard(s.device)
    if s.dtype == "auto" or not s.dtype_choice:  # a caller that resolved it already says why
        dtype, why = resolve_dtype(s.dtype, shard.device, (config.hidden_size, config.intermediate_size))
        dtype, why = shard.gather((dtype, why))[0]  # every process uses rank 0's choice
        s = replace(s, dtype=dtype, dtype_choice=why)
    if not quiet and shard.main:
        print(f"dtype {s.dtype} ({s.dtype_choice})", file=sys.stderr, flush=True)
    model = load_model(model_dir, dtype=getattr(torch, s.dtype), device=shard.device)  # refuses damaged weights
    work = WorkDir(out, s.fingerprint(model_dir, bench), shard.rank)
    cells, timing, stats = measure(model, tok, concepts, others, s, work, shard, quiet, start=t0,
                                   report_every=report_every)
    magnitudes = magnitude_step(stats, others, s) if shard.main else None
    timing["total"] = time.time() - t0
    result = build_result(str(model_dir), str(bench), {**asdict(s), "processes": shard.world}, concepts,
                          others, cells, timing, magnitudes)
    bad = [concepts[i].name for i in range(len(concepts)) if not torch.isfinite(stats.means[i]).all()]
    if bad:  # finite weights can still overflow (fp16, huge activations): the scores are then unreliable
        result["nonfinite_activations"] = bad
        result["warning"] = (result.get("warning", "") + " " if "warning" in result else "") + (
            f"activations became NaN or infinite on the questions of {len(bad)} concept(s) "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the result is not reliable")
    if shard.main:
        write_result(result, out)
    shard.close()
    return result


def measure(model, tok, concepts: list[Concept], others: list[list[int]], s: Settings, work, shard=None,
            quiet: bool = False, start: float | None = None,
            report_every: float = REPORT_EVERY) -> tuple[dict, dict, torch.Tensor]:
    """The paper's steps on a loaded model: coefficients per concept (§3.2), the accuracy before
    masking, then every masked cell, each located (Eq. 5) and masked (Eq. 4) and scored. Work already
    in `work` (a `WorkDir`, or `Unsaved`) is reused. Returns every cell's per-question correctness (by
    `cell_key`), the time of each step (the first from `start`, so that it includes loading) and the
    coefficient statistics (`locate.ConceptStats`). Each step reports its progress on stderr at least every
    `report_every` seconds unless `quiet`."""
    shard = shard or Shard(s.device)
    t0 = time.time() if start is None else start
    mine = [i for i in range(len(concepts)) if shard.mine(i)]
    work.keep_cells(lambda key: expected_length(key, concepts, others))
    stats, signed = coefficients_step(model, tok, concepts, mine, s, work, shard, quiet, report_every)
    timing = {"coefficients": time.time() - t0}
    t1 = time.time()
    baseline_step(model, tok, concepts, mine, s, work, quiet, report_every)
    timing["baseline"] = time.time() - t1
    t2 = time.time()
    masked_step(model, tok, concepts, others, mine, stats, signed, s, work, quiet, report_every)
    timing["masked"] = time.time() - t2
    cells = {}
    for part in shard.gather(work.cells):
        cells.update(part)
    return cells, timing, stats


def expected_length(key: str, concepts: list[Concept], others: list[list[int]]) -> int | None:
    """How many answers the cell `key` holds in this run (None: not a cell of this run)."""
    cell = parse_cell_key(key)
    if cell is None or not 0 <= cell[1] < len(concepts):
        return None
    kind, i, _ = cell
    return len(concepts[i].mcq) if kind == "baseline" else len(questions_of(concepts, i, others[i]))


def coefficients_step(model, tok, concepts, mine, s: Settings, work, shard, quiet=False,
                      report_every: float = REPORT_EVERY):
    """Per concept and group of its questions (all of them; with split-half also each half,
    `locate.question_groups`) the mean of the per-question |m| (§3.2), with the zscore locator the mean of
    their squares too, as a `ConceptStats`; with mean-ablation also the signed means `[C, L, d_ff]`. Each
    process computes its own concepts, all of them receive every concept's."""
    counts = [len(c.mcq) for c in concepts]
    per_question = {}

    def gathered(reduce, absolute=True):
        def compute():
            if absolute not in per_question:
                texts = [coefficient_prompt(q) for i in mine for q in concepts[i].mcq]
                with Progress(len(texts), "coefficients" if absolute else "signed means", quiet, report_every,
                              "questions") as p:
                    per_question[absolute] = question_coefficients(model, tok, texts, s.token_rule, s.batch_size,
                                                                   absolute, p.add)
            part = reduce(per_question[absolute], [counts[i] for i in mine])
            parts = {i: part[n] for n, i in enumerate(mine)}
            for other in shard.gather(parts):
                parts.update(other)
            return torch.stack([parts[i] for i in range(len(concepts))])
        return compute

    C, L, d = len(concepts), model.config.num_layers, model.config.intermediate_size
    means = work.coefficients(gathered(lambda x, n: group_stats(x, n, False)[:, 0]), shape=(C, L, d))[:, None]
    if s.split_half:
        halves = work.coefficients(gathered(lambda x, n: group_stats(x, n, True)[:, 1:]), "half_coefficients",
                                   (C, 2, L, d))
        means = torch.cat([means, halves], 1)
    squares = None
    if s.locator == "zscore":
        squares = work.coefficients(gathered(lambda x, n: group_stats(x, n, s.split_half, squares=True)),
                                    "coefficient_squares", (C, means.shape[1], L, d))
    stats = ConceptStats(means, [[len(g) for g in question_groups(n, s.split_half)] for n in counts], squares)
    signed = None
    per_question.clear()  # the |m| rows are no longer needed
    if s.ablation == "mean":
        signed = work.coefficients(gathered(lambda x, n: group_stats(x, n, False)[:, 0], False), "signed_means",
                                   (C, L, d))
    return stats, signed


def magnitude_step(stats: ConceptStats, others: list[list[int]], s: Settings) -> dict:
    """Per ratio, the mean magnitude a (the mean |m| over the unrelated questions) of the units each kind
    of mask sets to 0, averaged over concepts and the layers >= skip (`locate.set_magnitudes`), their
    median (averaged over concepts), and the share of matched units that are also located. Computed for every kind, whichever controls ran: the
    saved coefficients are all it needs."""
    per = [set_magnitudes(i, s.ratios, stats, others[i], s.skip_layers, s.seed, s.locator, s.split_half)
           for i in range(len(others))]
    return {"magnitude_by_ratio": {str(r): {kind: mean(p[r][kind] for p in per) for kind in KINDS} for r in s.ratios},
            "magnitude_median_by_ratio": {str(r): {kind: mean(p[r][kind, "median"] for p in per) for kind in KINDS}
                                          for r in s.ratios},
            "matched_shared_by_ratio": {str(r): mean(p[r]["shared"] for p in per) for r in s.ratios}}


def baseline_step(model, tok, concepts, mine, s: Settings, work, quiet=False,
                  report_every: float = REPORT_EVERY) -> None:
    """Accuracy before masking: each concept's own questions, unmasked (one more mask, all ones, for
    the shared-work evaluator: the missing concepts in groups of at most 32 questions, each group's
    cells saved, and its progress reported, as it finishes)."""
    missing = [i for i in mine if cell_key("baseline", i) not in work.cells]
    alone = [[] for _ in concepts]
    with Progress(sum(len(concepts[i].mcq) for i in missing), "baseline", quiet, report_every, "questions") as p:
        for group in engine_groups(missing, alone, [len(c.mcq) for c in concepts], 32):
            qs = [q for i in group for q in concepts[i].mcq]
            if s.engine:
                ones = torch.ones(1, model.config.num_layers, model.config.intermediate_size, device=model.device,
                                  dtype=model.dtype)
                answers = many_masks.answers(model, tok, qs, ones, s.skip_layers, s.mode, s.cloze_mean,
                                             s.early_stop, progress=p.add)[0]
            else:
                answers = mcq_answers(model, tok, qs, s.mode, None, s.batch_size, s.early_stop, s.cloze_mean)
                p.add(len(qs))
            for i in group:
                n = len(concepts[i].mcq)
                work.save_cell(cell_key("baseline", i),
                               [a == q.answer for a, q in zip(answers[:n], concepts[i].mcq)])
                answers = answers[n:]


def masked_step(model, tok, concepts, others, mine, stats, signed, s: Settings, work, quiet=False,
                report_every: float = REPORT_EVERY) -> None:
    """Every missing (kind, concept, ratio) cell: the concept's mask (located, or a control) scored on its
    own and its unrelated questions (§4.1); with split-half, two masks, each located on one half of the
    questions and scoring the other (`locate.cell_masks`). A cell holds the answers in `questions_of` order
    and is saved as soon as its masks' questions are all answered; progress counts (mask, question) rows
    (METHOD.md §10)."""
    counts = [len(c.mcq) for c in concepts]
    kinds = [k for k, on in zip(KINDS, (True, s.control, s.matched_control)) if on]
    todo = [(k, i, r) for i in mine for r in s.ratios for k in kinds if cell_key(k, i, r) not in work.cells]
    rows = sum(counts[i] + sum(counts[j] for j in others[i]) for _, i, _ in todo)
    with Progress(rows, "masked", quiet, report_every) as progress:
        # the shared-work evaluator takes several concepts at once (their questions overlap: t* of one is t
        # of others), so the blocks below skip run once per question for the group, not once per concept
        for group in engine_groups(sorted({i for _, i, _ in todo}), others, counts, 256 if s.engine else 1):
            pool, which, cells, masks = {}, [], [], []
            for i in group:
                mine_i = [(k, r) for k, j, r in todo if j == i]
                m, parts = cell_masks(i, mine_i, stats, others[i], s.skip_layers, s.seed, s.locator,
                                      s.split_half, signed)
                keys = [(j, k) for j in [i] + others[i] for k in range(counts[j])]  # questions_of's order
                index = [pool.setdefault(key, len(pool)) for key in keys]
                rows = [None] * len(m)
                for cell_parts in parts:
                    for row, positions in cell_parts:
                        rows[row] = [index[p] for p in positions]
                cells += [((k, i, r), [(len(which) + row, positions) for row, positions in cell_parts])
                          for (k, r), cell_parts in zip(mine_i, parts)]
                which += rows
                masks.append(m)
            masks = torch.cat(masks).to(device=model.device, dtype=model.dtype)
            qs = [concepts[j].mcq[k] for j, k in pool]
            cell_of = {row: n for n, (_, cell_parts) in enumerate(cells) for row, _ in cell_parts}
            answered = {}

            def save(row: int, got: list) -> None:  # mask `row` has answered all its questions
                answered[row] = got
                key, cell_parts = cells[cell_of[row]]
                if all(r in answered for r, _ in cell_parts):  # and so have the other masks of its cell
                    correct = [None] * sum(len(positions) for _, positions in cell_parts)
                    for r, positions in cell_parts:
                        for p, q, a in zip(positions, which[r], answered.pop(r)):
                            correct[p] = a == qs[q].answer
                    work.save_cell(cell_key(*key), correct)

            if s.engine:  # all of this group's masks at once
                many_masks.answers(model, tok, qs, masks, s.skip_layers, s.mode, s.cloze_mean, s.early_stop,
                                   which, on_mask=save, progress=progress.add)
            else:
                for row, (w, mask) in enumerate(zip(which, masks)):
                    save(row, mcq_answers(model, tok, [qs[q] for q in w], s.mode, mask, s.batch_size,
                                          s.early_stop, s.cloze_mean))
                    progress.add(len(w))
