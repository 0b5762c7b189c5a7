"""`minipss pss` end to end: benchmark -> coefficients -> masks -> masked scoring -> PSS -> result file.

`run_pss` checks every input before any work, loads, and calls `measure`, which follows the paper's steps
(`coefficients_step`, `baseline_step`, `masked_step`) on a loaded model; the §5 experiment calls `measure`
on concepts it holds in memory. Work is saved as it goes (`workdir.WorkDir`: the coefficients, then one
line per finished cell), so an interrupted run resumes where it stopped and gives the result an
uninterrupted run gives.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .. import interrupts, lock
from ..method import many_masks
from ..method.benchmark import Concept, load_benchmark, questions_of, unrelated_sets
from ..method.controls import (KINDS, ConceptStats, cell_masks, group_stats, halves_of, pseudo_concepts,
                               question_groups, set_magnitudes)
from ..method.prompts import coefficient_prompt
from ..method.pss import (answer_of, concept_means, letter_vocab, mcq_answers, mcq_scores, mean, p_correct,
                          question_coefficients)
from ..model.families import read_config
from ..model.fastest import resolve_dtype
from ..model.load import load_model
from ..model.tokenizer import load_tokenizer
from .checks import check_outputs, check_prompt_lengths, model_inputs, output_paths
from .progress import REPORT_EVERY, Progress
from .report import build_result, cell_key, parse_cell_key, write_result
from .settings import Settings
from .shard import Shard
from .workdir import WorkDir, describe


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
    with lock.hold(out) if int(os.environ.get("RANK", "0")) == 0 else nullcontext():  # one run per --out
        return _run_pss(model_dir, bench, out, s, quiet, report_every, t0)


def _run_pss(model_dir, bench: Path, out: Path, s: Settings, quiet: bool, report_every: float, t0: float) -> dict:
    work_path = output_paths(out)[2]
    interrupts.saved(work_path, lambda: describe(work_path))
    concepts = load_benchmark(bench)[: s.concepts]
    others = unrelated_sets(concepts, s.n_unrelated, s.seed, s.unrelated)
    few = [c for c in concepts if len(set(halves_of(c.mcq))) < 2]
    if s.split_half and few:
        raise ValueError(f"{bench}:{few[0].line}: concept {few[0].name!r} has {len(few[0].mcq)} question(s) "
                         "about one fact; --split-half needs at least 2 per concept (one per half; questions of "
                         "one fact stay in one half)")
    try:
        pseudo = pseudo_concepts(concepts, others, s.seed) if s.pseudo_control else None
    except ValueError as e:
        raise ValueError(f"{bench}: --pseudo-control: {e}") from None
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
    cells, probs, timing, stats = measure(model, tok, concepts, others, s, work, shard, quiet, start=t0,
                                          report_every=report_every, pseudo=pseudo)
    magnitudes = magnitude_step(stats, others, s) if shard.main else None
    timing["total"] = time.time() - t0
    result = build_result(str(model_dir), str(bench), {**asdict(s), "processes": shard.world}, concepts,
                          others, cells, timing, magnitudes, probs, pseudo)
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
            quiet: bool = False, start: float | None = None, report_every: float = REPORT_EVERY,
            pseudo: list[list[tuple[int, int]]] | None = None) -> tuple[dict, dict, dict, ConceptStats]:
    """The paper's steps on a loaded model: coefficients per concept (§3.2), the accuracy before
    masking, then every masked cell, each located (Eq. 5) and masked (Eq. 4) and scored. Work already
    in `work` (a `WorkDir`, or `Unsaved`) is reused. Returns every cell's per-question correctness and, in
    cloze and logits modes, p(correct) (each by `cell_key`), the time of each step (the first from `start`,
    so that it includes loading) and the coefficient statistics (`controls.ConceptStats`; with `pseudo`,
    the pseudo-concepts' after the concepts'). `pseudo` (`controls.pseudo_concepts`) adds the pseudo-concept
    control's cells. Each step reports its progress on stderr at least every `report_every` seconds unless
    `quiet`."""
    shard = shard or Shard(s.device)
    t0 = time.time() if start is None else start
    mine = [i for i in range(len(concepts)) if shard.mine(i)]
    work.keep_cells(lambda key: expected_length(key, concepts, others, pseudo), graded=s.mode != "generate")
    stats, signed = coefficients_step(model, tok, concepts, mine, s, work, shard, quiet, report_every, pseudo)
    timing = {"coefficients": time.time() - t0}
    t1 = time.time()
    baseline_step(model, tok, concepts, mine, s, work, quiet, report_every)
    timing["baseline"] = time.time() - t1
    t2 = time.time()
    masked_step(model, tok, concepts, others, mine, stats, signed, s, work, quiet, report_every, pseudo)
    timing["masked"] = time.time() - t2
    cells, probs = {}, {}
    for part, part_probs in shard.gather((work.cells, work.probs)):
        cells.update(part)
        probs.update(part_probs)
    return cells, probs, timing, stats


def expected_length(key: str, concepts: list[Concept], others: list[list[int]],
                    pseudo: list[list[tuple[int, int]]] | None = None) -> int | None:
    """How many answers the cell `key` holds in this run (None: not a cell of this run)."""
    cell = parse_cell_key(key)
    if cell is None or not 0 <= cell[1] < len(concepts) or (cell[0] == "pseudo" and pseudo is None):
        return None
    kind, i, _ = cell
    return len(concepts[i].mcq) if kind == "baseline" else len(questions_of(concepts, i, others[i]))


def coefficients_step(model, tok, concepts, mine, s: Settings, work, shard, quiet=False,
                      report_every: float = REPORT_EVERY, pseudo=None):
    """Per concept and group of its questions (all of them; with split-half also each half,
    `controls.question_groups`) the mean of the per-question |m| (§3.2), with the zscore locator the mean of
    their squares too, as a `ConceptStats`; with mean-ablation also the signed means `[C, L, d_ff]`. With
    `pseudo`, the pseudo-concepts' statistics, computed the same way from their questions, follow the
    concepts' (pseudo-concept i is entry C + i). Each process computes its own concepts, all of them receive
    every concept's."""
    stats, signed = question_stats(model, tok, [c.mcq for c in concepts], mine, s, work, shard, quiet, report_every)
    if pseudo is None:
        return stats, signed
    borrowed = [[concepts[j].mcq[k] for j, k in questions] for questions in pseudo]
    more, _ = question_stats(model, tok, borrowed, mine, s, work, shard, quiet, report_every, "pseudo_")
    squares = None if stats.squares is None else torch.cat([stats.squares, more.squares])
    return ConceptStats(torch.cat([stats.means, more.means]), stats.counts + more.counts, squares,
                        stats.halves + more.halves), signed


def question_stats(model, tok, questions, mine, s: Settings, work, shard, quiet=False,
                   report_every: float = REPORT_EVERY, prefix: str = ""):
    """`coefficients_step` for one list of question sets (`questions[i]`, the MCQs of concept i), saved in
    `work` under names starting with `prefix`; the signed means only for the concepts themselves. A
    pseudo-concept's questions come from different concepts, so each is a fact of its own
    (`controls.halves_of`)."""
    counts = [len(qs) for qs in questions]
    halves = [halves_of(qs, by_fact=not prefix) for qs in questions]
    per_question = {}
    label = "pseudo-concept coefficients" if prefix else "coefficients"

    def gathered(reduce, absolute=True):
        def compute():
            if absolute not in per_question:
                texts = [coefficient_prompt(q) for i in mine for q in questions[i]]
                with Progress(len(texts), label if absolute else "signed means", quiet, report_every,
                              "questions") as p:
                    per_question[absolute] = question_coefficients(model, tok, texts, s.token_rule, s.batch_size,
                                                                   absolute, p.add)
            part = reduce(per_question[absolute], [halves[i] for i in mine])
            parts = {i: part[n] for n, i in enumerate(mine)}
            for other in shard.gather(parts):
                parts.update(other)
            return torch.stack([parts[i] for i in range(len(questions))])
        return compute

    C, L, d = len(questions), model.config.num_layers, model.config.intermediate_size
    means_of = lambda x, h: concept_means(x, [len(v) for v in h])
    means = work.coefficients(gathered(means_of), prefix + "coefficients", (C, L, d))[:, None]
    if s.split_half:
        by_half = work.coefficients(gathered(lambda x, h: group_stats(x, h, True)[:, 1:]), prefix + "half_coefficients",
                                    (C, 2, L, d))
        means = torch.cat([means, by_half], 1)
    squares = None
    if s.locator == "zscore":
        squares = work.coefficients(gathered(lambda x, h: group_stats(x, h, s.split_half, squares=True)),
                                    prefix + "coefficient_squares", (C, means.shape[1], L, d))
    stats = ConceptStats(means, [[len(g) for g in question_groups(h, s.split_half)] for h in halves], squares, halves)
    signed = None
    per_question.clear()  # the |m| rows are no longer needed
    if s.ablation == "mean" and not prefix:
        signed = work.coefficients(gathered(means_of, False), "signed_means", (C, L, d))
    return stats, signed


def magnitude_step(stats: ConceptStats, others: list[list[int]], s: Settings) -> dict:
    """Per ratio, the mean magnitude a (the mean |m| over the unrelated questions) of the units each kind
    of mask sets to 0, averaged over concepts and the layers >= skip (`controls.set_magnitudes`), their
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
                                             s.early_stop, progress=p.add, scores=s.mode != "generate")[0]
            else:
                answers = one_mask(model, tok, qs, None, s)
                p.add(len(qs))
            for i in group:
                n = len(concepts[i].mcq)
                work.save_cell(cell_key("baseline", i), *judged(answers[:n], concepts[i].mcq))
                answers = answers[n:]


def one_mask(model, tok, questions, mlp_mask, s: Settings) -> list:
    """One mask's answers the plain way (`--no-engine`): each question's option scores in cloze and logits
    modes (`pss.mcq_scores`), its letter in generate mode (`pss.mcq_answers`)."""
    if s.mode == "generate":
        return mcq_answers(model, tok, questions, s.mode, mlp_mask, s.batch_size, s.early_stop, s.cloze_mean)
    return mcq_scores(model, tok, questions, s.mode, mlp_mask, s.batch_size, s.cloze_mean)


def judged(answers: list, questions) -> tuple[list[bool], list[float] | None]:
    """Per question, right or wrong and, where the answers are option scores (cloze, logits), p(correct)
    (`pss.p_correct`); None for letters (generate mode)."""
    if answers and isinstance(answers[0], list):
        return ([answer_of(a) == q.answer for a, q in zip(answers, questions)],
                [p_correct(a, q.answer) for a, q in zip(answers, questions)])
    return [a == q.answer for a, q in zip(answers, questions)], None


def masked_step(model, tok, concepts, others, mine, stats, signed, s: Settings, work, quiet=False,
                report_every: float = REPORT_EVERY, pseudo=None) -> None:
    """Every missing (kind, concept, ratio) cell: the concept's mask (located, or a control) scored on its
    own and its unrelated questions (§4.1); with split-half, two masks, each located on one half of the
    questions and scoring the other (`controls.cell_masks`). A `pseudo` cell is the located mask of concept
    i's pseudo-concept (entry C + i of `stats`), scored on the pseudo-concept's questions and i's unrelated
    ones. A cell holds the answers in `questions_of` order (the pseudo-concept's questions first) and is
    saved as soon as its masks' questions are all answered; progress counts (mask, question) rows
    (METHOD.md §10)."""
    counts = [len(c.mcq) for c in concepts]
    kinds = [k for k, on in zip((*KINDS, "pseudo"), (True, s.control, s.matched_control, pseudo is not None)) if on]
    todo = [(k, i, r) for i in mine for r in s.ratios for k in kinds if cell_key(k, i, r) not in work.cells]
    rows = sum(counts[i] + sum(counts[j] for j in others[i]) for _, i, _ in todo)
    with Progress(rows, "masked", quiet, report_every) as progress:
        # the shared-work evaluator takes several concepts at once (their questions overlap: t* of one is t
        # of others), so the blocks below skip run once per question for the group, not once per concept
        for group in engine_groups(sorted({i for _, i, _ in todo}), others, counts, 256 if s.engine else 1):
            pool, which, cells, mlp_masks = {}, [], [], []
            for i in group:
                unrelated = [(j, k) for j in others[i] for k in range(counts[j])]
                own = [(k, r) for k, j, r in todo if j == i and k != "pseudo"]
                its_pseudo = [("located", r) for k, j, r in todo if j == i and k == "pseudo"]
                # (entry of stats that locates, its cells, the kind they are saved as, the questions scored)
                for located_as, unit_cells, kind, keys in (
                        (i, own, None, [(i, k) for k in range(counts[i])] + unrelated),
                        (len(concepts) + i, its_pseudo, "pseudo", (pseudo[i] if pseudo else []) + unrelated)):
                    if not unit_cells:
                        continue
                    its_masks, parts = cell_masks(located_as, unit_cells, stats, others[i], s.skip_layers, s.seed,
                                                  s.locator, s.split_half, signed)
                    index = [pool.setdefault(key, len(pool)) for key in keys]
                    rows = [None] * len(its_masks)
                    for cell_parts in parts:
                        for row, positions in cell_parts:
                            rows[row] = [index[p] for p in positions]
                    cells += [((kind or k, i, r), [(len(which) + row, positions) for row, positions in cell_parts])
                              for (k, r), cell_parts in zip(unit_cells, parts)]
                    which += rows
                    mlp_masks.append(its_masks)
            mlp_masks = torch.cat(mlp_masks).to(device=model.device, dtype=model.dtype)
            qs = [concepts[j].mcq[k] for j, k in pool]
            cell_of = {row: n for n, (_, cell_parts) in enumerate(cells) for row, _ in cell_parts}
            answered = {}

            def save(row: int, got: list) -> None:  # mask `row` has answered all its questions
                answered[row] = got
                key, cell_parts = cells[cell_of[row]]
                if all(r in answered for r, _ in cell_parts):  # and so have the other masks of its cell
                    got = [None] * sum(len(positions) for _, positions in cell_parts)
                    questions = [None] * len(got)
                    for r, positions in cell_parts:
                        for p, q, a in zip(positions, which[r], answered.pop(r)):
                            got[p], questions[p] = a, qs[q]
                    work.save_cell(cell_key(*key), *judged(got, questions))

            if s.engine:  # all of this group's masks at once
                many_masks.answers(model, tok, qs, mlp_masks, s.skip_layers, s.mode, s.cloze_mean, s.early_stop,
                                   which, on_mask=save, progress=progress.add, scores=s.mode != "generate")
            else:
                for row, (w, mlp_mask) in enumerate(zip(which, mlp_masks)):
                    save(row, one_mask(model, tok, [qs[q] for q in w], mlp_mask, s))
                    progress.add(len(w))
