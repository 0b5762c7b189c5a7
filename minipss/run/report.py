"""From per-question correctness to the result file: accuracies, PSS in every form, breakdowns (§6)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from ..interrupts import writing
from ..method.benchmark import TIERS, Concept
from ..method.pss import accuracy, concept_and_general, concept_cell, excess_drop, mean, model_pss
from .claims import CHANCE, floored, located_vs_control, verdict, verdict_sentence
from .stats import ALPHA, BOOTSTRAP, paired_test

ROWS = {"located": "by_ratio", "random": "control_by_ratio", "matched": "matched_by_ratio",
        "pseudo": "pseudo_by_ratio"}  # per-concept keys
CONTROLS = ("random", "matched", "pseudo")
SECTIONS = {"random": "control", "matched": "matched", "pseudo": "pseudo"}  # model-level keys of the controls
SETTING = {"random": "control", "matched": "matched_control", "pseudo": "pseudo_control"}  # the setting of each
# what the paired tests compare; the graded ones where the cells have them (cloze and logits modes)
MEASURES = ("excess_drop", "g_minus_c", "concept_after", "general_after", "prob_excess_drop", "prob_general_after")
GRADED = ("prob_concept_after", "prob_general_after", "prob_excess_drop")  # a cell's graded-outcome fields


def markdown_table(header: list[str], rows) -> list[str]:
    """The lines of a Markdown table: the header, its rule, one line per row (each cell as given); every
    report's tables are written by this."""
    return (["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def near_chance(acc: float, n: int) -> bool:
    """Accuracy within two binomial standard deviations of 25%."""
    return acc < CHANCE + 2 * math.sqrt(CHANCE * (1 - CHANCE) / max(n, 1))


def cell_key(kind: str, concept: int, ratio: float | None = None) -> str:
    """The one name of a cell of per-question correctness: `baseline|i` (concept i's own questions,
    unmasked), `located|i|r`, `random|i|r` or `matched|i|r` (its own and unrelated questions under its
    mask at ratio r)."""
    return f"{kind}|{concept}" if kind == "baseline" else f"{kind}|{concept}|{float(ratio)}"


def parse_cell_key(key: str) -> tuple[str, int, float | None] | None:
    """`(kind, concept, ratio)` of a `cell_key`, or None for anything else."""
    parts = key.split("|")
    try:
        if parts[0] == "baseline" and len(parts) == 2:
            return "baseline", int(parts[1]), None
        if parts[0] in ROWS and len(parts) == 3:
            return parts[0], int(parts[1]), float(parts[2])
    except ValueError:
        pass
    return None


def summarise(rows: list[dict], ratios: list[float], acc_before: float, key: str) -> dict:
    """Model-level scores over a group of concept rows, for the cells under `key` (by_ratio/control)."""
    out = {"pss_by_ratio": {}, "excess_by_ratio": {}, "g_minus_c_by_ratio": {},
           "concept_after_by_ratio": {}, "general_after_by_ratio": {}}
    graded = all("prob_excess_drop" in row[key][str(r)] for row in rows for r in ratios)
    for r in ratios:
        cells = [row[key][str(r)] for row in rows]
        ca, ga = [c["concept_after"] for c in cells], [c["general_after"] for c in cells]
        out["pss_by_ratio"][str(r)] = model_pss(ca, ga, acc_before, r)
        out["excess_by_ratio"][str(r)] = mean(c["excess_drop"] for c in cells)
        out["g_minus_c_by_ratio"][str(r)] = mean(ga) - mean(ca)
        out["concept_after_by_ratio"][str(r)] = mean(ca)
        out["general_after_by_ratio"][str(r)] = mean(ga)
        if graded:
            for name in GRADED:
                out.setdefault(f"{name}_by_ratio", {})[str(r)] = mean(c[name] for c in cells)
    out["pss"] = mean(out["pss_by_ratio"].values())
    out["excess_drop"] = mean(out["excess_by_ratio"].values())
    return out


def graded_cell(before_c: float, before_g: float, after_c: float, after_g: float) -> dict:
    """The graded outcome of one concept at one ratio (METHOD.md §5, §6): mean p(correct) on its own and on
    its unrelated questions under its mask, and the excess drop on that scale."""
    return {"prob_concept_after": after_c, "prob_general_after": after_g,
            "prob_excess_drop": excess_drop(before_c, before_g, after_c, after_g)}


def significance(rows: list[dict], ratios, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Per ratio (str(float) keys), per control whose cells every row has, per measure: the paired test of
    located against that control over concepts (`stats.paired_test`: mean difference, bootstrap 95%
    interval, sign-flip p-value), from the per-concept rows alone (METHOD.md §9)."""
    out = {}
    for r in map(str, ratios):
        out[r] = {}
        for kind in CONTROLS:
            if rows and all(r in row.get(ROWS[kind], {}) for row in rows):
                out[r][kind] = {m: paired_test([row["by_ratio"][r][m] for row in rows],
                                               [row[ROWS[kind]][r][m] for row in rows], n_boot, seed)
                                for m in MEASURES if all(m in row["by_ratio"][r] for row in rows)}
    return out


def build_result(model: str, bench: str, settings: dict, concepts: list[Concept], others: list[list[int]],
                 cells: dict, timing: dict, magnitudes: dict | None = None, probs: dict | None = None,
                 pseudo: list[list[tuple[int, int]]] | None = None) -> dict:
    """The result: scores per concept and ratio for every kind of cell present, model-level summaries,
    tiers, categories, the paired tests (`significance`) and, when given, the masked sets' magnitudes
    (`run.magnitude_step`). `probs`, per cell p(correct) per question (cloze and logits modes), adds the
    graded outcome beside every accuracy; `pseudo` (`controls.pseudo_concepts`) names the questions of
    each concept's pseudo-concept, whose cells are then scored against the pseudo-concept's own accuracy
    before masking."""
    ratios, probs = settings["ratios"], probs or {}
    starts, pos = [], 0
    for c in concepts:
        starts.append(pos)
        pos += len(c.mcq)

    def before(table):  # per question, in benchmark order, from the baseline cells; None if any is missing
        keys = [cell_key("baseline", i) for i in range(len(concepts))]
        return [x for k in keys for x in table[k]] if all(k in table for k in keys) else None

    base, base_p = before(cells), before(probs)
    graded = base_p is not None
    acc_before = accuracy(base)
    rows = []
    for i, c in enumerate(concepts):
        n = len(c.mcq)
        questions = {"concept": [starts[i] + k for k in range(n)],
                     "general": [starts[j] + k for j in others[i] for k in range(len(concepts[j].mcq))],
                     "pseudo": [starts[j] + k for j, k in pseudo[i]] if pseudo else []}
        acc = {part: accuracy([base[q] for q in qs]) for part, qs in questions.items()}
        prob = {part: accuracy([base_p[q] for q in qs]) for part, qs in questions.items()} if graded else {}
        row = {"concept": c.name, "tier": c.tier, "category": c.category,
               "concept_before": acc["concept"], "general_before": acc["general"],
               **({"prob_concept_before": prob["concept"], "prob_general_before": prob["general"]} if graded else {}),
               "unrelated": [concepts[j].name for j in others[i]], "by_ratio": {}}
        if pseudo:
            row["pseudo_questions"] = [[concepts[j].name, k] for j, k in pseudo[i]]
            row["pseudo_before"] = acc["pseudo"]
            if graded:
                row["prob_pseudo_before"] = prob["pseudo"]
        for kind, key in ROWS.items():
            if not all(cell_key(kind, i, r) in cells for r in ratios):
                continue
            own = "pseudo" if kind == "pseudo" else "concept"
            row[key] = {}
            for r in ratios:
                k = cell_key(kind, i, r)
                row[key][str(r)] = concept_cell(acc[own], acc["general"], *concept_and_general(cells[k], n),
                                                acc_before, r)
                if graded and k in probs:
                    row[key][str(r)].update(graded_cell(prob[own], prob["general"], *concept_and_general(probs[k], n)))
        row["pss"] = mean(cell["pss"] for cell in row["by_ratio"].values())
        row["excess_drop"] = mean(cell["excess_drop"] for cell in row["by_ratio"].values())
        rows.append(row)
    located = summarise(rows, ratios, acc_before, "by_ratio")
    result = {"model": model, "bench": bench, "settings": settings, "acc_before": acc_before,
              **({"prob_before": accuracy(base_p)} if graded else {}),
              "pss": located["pss"], "pss_by_ratio": located["pss_by_ratio"], **{
                  k: v for k, v in located.items() if k not in ("pss", "pss_by_ratio")}}
    result["pss_concept_mean"] = mean(r["pss"] for r in rows)
    result["floored_by_ratio"] = {r: floored(g) for r, g in result["general_after_by_ratio"].items()}
    for kind in CONTROLS:
        if all(ROWS[kind] in r for r in rows) and settings.get(SETTING[kind]):
            result[SECTIONS[kind]] = summarise(rows, ratios, acc_before, ROWS[kind])
    result.update(magnitudes or {})
    result["significance"] = significance(rows, ratios)
    result["verdict"] = verdict(result["significance"], result["floored_by_ratio"], graded)
    result["significance_test"] = {
        "difference": "mean over concepts of located minus control, per measure",
        "ci95": f"percentile bootstrap over concepts, {BOOTSTRAP} draws, seed 0",
        "p_value": "two-sided paired sign-flip permutation test over concepts (exact up to 16 concepts, "
                   "else 100000 seeded draws)", "alpha": ALPHA,
        "mde80": "smallest mean difference detected with 80% power at alpha, from the observed spread of the "
                 "per-concept differences (normal approximation)",
        "floored": "a ratio where General_after under the located vectors is within 0.05 of chance (0.25): "
                   "there a concept-specific difference cannot show, and a null says nothing of its absence",
        "verdict": "concept specificity decided once per result: at each ratio not floored, the excess drop "
                   "(of p(correct) where graded) above every control that ran, p the largest of theirs; "
                   "Holm across those ratios (METHOD.md §9)"}
    result["tiers"] = {}
    for tier in TIERS:
        group = [r for r in rows if r["tier"] == tier]
        if group:
            qs = [starts[i] + k for i, c in enumerate(concepts) if c.tier == tier for k in range(len(c.mcq))]
            acc = accuracy([base[q] for q in qs])
            result["tiers"][tier] = {"concepts": len(group), "acc_before": acc,
                                     **({"prob_before": accuracy([base_p[q] for q in qs])} if graded else {}),
                                     **summarise(group, ratios, acc, "by_ratio")}
    result["categories"] = {}
    for cat in sorted({c.category for c in concepts}):
        group = [r for r in rows if r["category"] == cat]
        result["categories"][cat] = {"concepts": len(group), "pss": mean(r["pss"] for r in group),
                                     "excess_drop": mean(r["excess_drop"] for r in group)}
    if near_chance(acc_before, len(base)):
        result["warning"] = (f"accuracy before masking ({acc_before:.3f}) is within chance of 25%: the model "
                             f"does not answer in the '{settings['mode']}' format and PSS is then noise; "
                             "try the other modes (generate, logits, cloze)")
    result["concepts"] = rows
    result["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    return result


def write_result(result: dict, out: Path) -> None:
    """The JSON result and a CSV of per-concept rows, each written whole (temp file, then rename); a write
    that fails leaves no temporary file and raises `interrupts.WriteFailed` naming the path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_suffix(".csv")
    graded = "prob_before" in result
    fields = ["concept", "tier", "category", "kind", "ratio", "concept_before", "general_before",
              "concept_after", "general_after", "g_minus_c", "pss", "pss_acc_before", "pss_raw", "excess_drop",
              *(("prob_concept_before", "prob_general_before", *GRADED) if graded else ())]

    def csv_rows(f):
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in result["concepts"]:
            for kind, key in ROWS.items():
                own = "pseudo" if kind == "pseudo" else "concept"  # a pseudo-concept's own questions are its own
                for r, cell in row.get(key, {}).items():
                    w.writerow({"concept": row["concept"], "tier": row["tier"], "category": row["category"],
                                "kind": kind, "ratio": r, "concept_before": row[f"{own}_before"],
                                "general_before": row["general_before"],
                                **({"prob_concept_before": row[f"prob_{own}_before"],
                                    "prob_general_before": row["prob_general_before"]} if graded else {}), **cell})

    for path, write in ((out, lambda f: f.write(json.dumps(result, indent=1))), (csv_path, csv_rows)):
        tmp = path.with_name(path.name + ".tmp")
        try:
            with writing(path), open(tmp, "w", newline="") as f:
                write(f)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _fmt(x) -> str:
    return "  null" if x is None else f"{x:+.3f}" if x < 0 else f"{x:6.3f}"


def summary(result: dict) -> str:
    """A readable summary for the terminal."""
    s = result["settings"]
    lines = [f"model {result['model']}  bench {result['bench']}  mode {s['mode']}  "
             f"concepts {len(result['concepts'])}  skip {s['skip_layers']}",
             f"accuracy before masking: {result['acc_before']:.3f}"
             + (f"   p(correct) before masking: {result['prob_before']:.3f}" if "prob_before" in result else ""),
             f"PSS (mean over ratios): {_fmt(result['pss'])}   excess drop: {_fmt(result['excess_drop'])}"]
    if "warning" in result:
        lines.append("WARNING: " + result["warning"])
    controls = [(name, result[SECTIONS[name]]) for name in CONTROLS if result.get(SECTIONS[name])]
    floors = result.get("floored_by_ratio", {})
    lines.append("")
    lines.append("ratio    PSS  concept_after general_after excess_drop"
                 + "".join(f"  | {name}: PSS excess" for name, _ in controls))
    for r in result["pss_by_ratio"]:
        line = (f"{float(r):<6g} {_fmt(result['pss_by_ratio'][r])}  {_fmt(result['concept_after_by_ratio'][r])}"
                f"        {_fmt(result['general_after_by_ratio'][r])}       {_fmt(result['excess_by_ratio'][r])}")
        for _, section in controls:
            line += f"  |   {_fmt(section['pss_by_ratio'][r])} {_fmt(section['excess_by_ratio'][r])}"
        lines.append(line + ("  (floored)" if floors.get(r) else ""))
    if any(floors.values()):
        lines.append("floored: General_after under the located vectors within 0.05 of chance; a concept-specific "
                     "difference cannot show there")
    if controls:  # the raw parts side by side: what masking each set does to both accuracies
        lines += ["", "accuracy after masking, concept / general:  located"
                  + "".join(f"  | {name}" for name, _ in controls)]
        for r in result["pss_by_ratio"]:
            lines.append(f"{float(r):<6g} " + "  | ".join(
                f"{_fmt(part['concept_after_by_ratio'][r])} / {_fmt(part['general_after_by_ratio'][r])}"
                for part in [result] + [section for _, section in controls]))
    magnitudes, medians = result.get("magnitude_by_ratio"), result.get("magnitude_median_by_ratio", {})
    if magnitudes:
        lines += ["", "|m| of the masked units (over unrelated questions):  mean: located random matched"
                  + ("  | median: located random matched" if medians else "")]
        for r, m in magnitudes.items():
            line = f"{float(r):<6g} {_fmt(m['located'])} {_fmt(m['random'])} {_fmt(m['matched'])}"
            if r in medians:
                line += "  |   " + " ".join(_fmt(medians[r][kind]) for kind in ("located", "random", "matched"))
            lines.append(line)
    tests = [(r, kind, t) for r, by in result.get("significance", {}).items() if float(r) > 0
             for kind, t in by.items()]  # at ratio 0 nothing is masked: nothing to say
    if tests:
        lines += ["", "located against the controls (paired tests over concepts):"]
        lines += ["  " + located_vs_control(r, kind, t[measure], measure, result["general_after_by_ratio"].get(r))
                  for r, kind, t in tests
                  for measure in ("general_after", "excess_drop", "prob_excess_drop") if measure in t]
    if result.get("verdict"):
        lines += ["", verdict_sentence(result["verdict"])]
    lines.append("")
    lines.append("tier    concepts acc_before   PSS  excess_drop")
    for tier, t in result["tiers"].items():
        lines.append(f"{tier:<7} {t['concepts']:>8} {_fmt(t['acc_before'])}   {_fmt(t['pss'])} {_fmt(t['excess_drop'])}")
    return "\n".join(lines)
