"""The sentences a report writes about its tests (METHOD.md §9). Each is made from its test alone: it
claims an effect only when the test gives p < ALPHA in the direction it names; otherwise it says that none
was detected and what the test could have detected (`mde80`), or, where the located vectors already push
accuracy on unrelated questions to chance (a floor), that a concept-specific difference cannot show there."""

from __future__ import annotations

from .stats import ALPHA, holm

CHANCE = 0.25  # four options
FLOOR = 0.05  # General_after under the located vectors within this of chance (or below): floored
CONTROLS = {"random": "uniform random vectors", "matched": "magnitude-matched random vectors",
            "pseudo": "the vectors located for a pseudo-concept (as many questions, one from each of other concepts)"}
MEASURES = {"excess_drop": "excess drop", "g_minus_c": "G - C", "concept_after": "Concept_after",
            "general_after": "General_after", "prob_excess_drop": "excess drop of p(correct)",
            "prob_general_after": "p(correct) on unrelated questions"}
_SPECIFIC = ("hurt their own concept {word} than {name} do, beyond what they do to unrelated questions",
             ("more", "less"), "no concept-specific difference between located vectors and {name}")
_GENERAL = ("lower {on} {word} than {name} do", ("less", "more"), "no difference in {on} between located vectors and {name}")
# what a detected difference says (located minus control; its sign picks the word), and what a null says
CLAIMS = {"excess_drop": _SPECIFIC, "prob_excess_drop": _SPECIFIC,
          "general_after": _GENERAL, "prob_general_after": _GENERAL}
ON = {"general_after": "accuracy on unrelated questions",
      "prob_general_after": "the probability of the correct option on unrelated questions"}
CONCEPT_SPECIFIC = ("excess_drop", "prob_excess_drop", "g_minus_c", "concept_after")  # hidden by a floor
FOLD_NOTE = ("PSS is an absolute value, so its bootstrap interval folds away from 0 near 0: it cannot test "
             "PSS > 0 (the paired tests of the signed excess drop and G - C can).")


def floored(general_after: float | None) -> bool:
    """True where accuracy on unrelated questions under the located vectors lies within FLOOR of chance
    or below it: the concept's own questions have nowhere left to fall, so no concept-specific difference
    can show."""
    return general_after is not None and general_after < CHANCE + FLOOR


def floor_note(general_after: float) -> str:
    return (f"General_after under the located vectors is {general_after:.3f}, within {FLOOR} of chance "
            f"({CHANCE}): floored, a concept-specific difference cannot show here")


def _pct(ratio) -> str:
    return f"{float(ratio) * 100:g}%"


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 0.001 else f"p = {p:.1e}"


def located_vs_control(ratio, control: str, test: dict, measure: str = "excess_drop",
                       general_after: float | None = None) -> str:
    """One sentence on the paired test (`stats.paired_test`) of located against `control` ("random",
    "matched", "pseudo") at `ratio` for `measure`: with a concept-specific measure ("excess_drop", the
    default, or "prob_excess_drop"), whether located vectors hurt their own concept more (or less) than the
    control beyond what they do to unrelated questions; with "general_after" or "prob_general_after",
    whether they lower that more (or less); or that no difference was detected, with the smallest one the
    test detects with 80% power. `general_after`, the located vectors' General_after at this ratio, marks
    a floor: there a null of a concept-specific measure is not read as absence."""
    name, what = CONTROLS[control], MEASURES[measure]
    claim, (up, down), null = CLAIMS[measure]
    d, ci, p, mde = test.get("difference"), test.get("ci95"), test.get("p_value"), test.get("mde80")
    if d is None or p is None:
        return f"At ratio {_pct(ratio)}: no concept has both a located and a {name} cell to compare."
    numbers = (f"{what} located minus control {d:+.3f}"
               + (f", 95% interval [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
               + f", {_p(p)} (paired sign-flip test over {test.get('n', '?')} concepts)")
    if p < ALPHA:
        return (f"At ratio {_pct(ratio)}, located vectors "
                f"{claim.format(word=up if d > 0 else down, name=name, on=ON.get(measure))}: {numbers}.")
    if measure in CONCEPT_SPECIFIC and floored(general_after):
        return (f"At ratio {_pct(ratio)}, {floor_note(general_after)}; the test ({numbers}) "
                "says nothing about whether such a difference exists.")
    power = (f"this test detects {mde:.3f} or more with 80% power" if mde is not None
             else "too few concepts to say what this test could detect")
    return f"At ratio {_pct(ratio)}, {null.format(name=name, on=ON.get(measure))} was detected (alpha {ALPHA}): {numbers}; {power}."


def verdict(significance: dict, floored_by_ratio: dict, graded: bool) -> dict:
    """The one decision a result makes on concept specificity (METHOD.md §9). Its measure is the excess drop
    of p(correct) where the mode gives one (`graded`), else of accuracy. At each masked ratio that is not
    floored, the located vectors must hurt their own concept more than every control that ran: each
    difference positive, and the largest of the controls' p-values is that ratio's p (an
    intersection-union test: level ALPHA with no correction). Across those ratios, Holm's step-down keeps
    the chance of a false detection at most ALPHA. `detected` is None where no ratio could decide (every
    one floored, or no control ran)."""
    measure = "prob_excess_drop" if graded else "excess_drop"
    by_ratio, floored_ratios = {}, []
    for r, by in significance.items():
        tests = [t[measure] for t in by.values() if t.get(measure, {}).get("p_value") is not None]
        if float(r) == 0 or not tests:
            continue
        if floored_by_ratio.get(r):
            floored_ratios.append(r)
            continue
        by_ratio[r] = {"controls": sorted(by), "p_value": max(t["p_value"] for t in tests),
                       "all_positive": all(t["difference"] > 0 for t in tests),
                       "smallest_difference": min(t["difference"] for t in tests),
                       "mde80": max((t["mde80"] for t in tests if t.get("mde80") is not None), default=None)}
    for r, p in zip(by_ratio, holm([v["p_value"] for v in by_ratio.values()])):
        by_ratio[r]["p_holm"] = p
        by_ratio[r]["detected"] = by_ratio[r]["all_positive"] and p < ALPHA
    return {"measure": measure, "alpha": ALPHA, "by_ratio": by_ratio, "floored": floored_ratios,
            "detected": any(v["detected"] for v in by_ratio.values()) if by_ratio else None}


def verdict_sentence(v: dict) -> str:
    """The decision of `verdict` in one sentence, with its numbers, its power, or the floor that blocks it."""
    what, floors = MEASURES[v["measure"]], ", ".join(map(_pct, v["floored"]))
    if v["detected"] is None:
        return ("Concept specificity: undecided; " + (f"every masked ratio is floored ({floors})" if v["floored"]
                                                      else "no control ran") + ".")
    n = len(v["by_ratio"])
    rule = f"alpha {v['alpha']}" + (f", Holm over {n} ratios" if n > 1 else "")
    tested = [f"{_pct(r)}: smallest difference {x['smallest_difference']:+.3f}, largest p {x['p_value']:.2g}"
              + (f", Holm p {x['p_holm']:.2g}" if n > 1 else "") for r, x in v["by_ratio"].items()]
    floor = f"; floored, not tested: {floors}" if v["floored"] else ""
    if v["detected"]:
        at = ", ".join(_pct(r) for r, x in v["by_ratio"].items() if x["detected"])
        return (f"Concept specificity: detected at {at}: the {what} under the located vectors exceeds every "
                f"control's ({rule}; " + "; ".join(tested) + f"{floor}).")
    power = ", ".join(f"{x['mde80']:.3f} or more at {_pct(r)}" for r, x in v["by_ratio"].items()
                      if x["mde80"] is not None)
    return (f"Concept specificity: not detected: the {what} under the located vectors is not shown to exceed "
            f"every control's ({rule}; " + "; ".join(tested) + f"{floor}); with 80% power the least sensitive "
            f"control's test alone detects {power}.")


def grows_with_accuracy(what: str, rho: float | None, p: float | None, n: int, method: str = "Spearman",
                        smallest: float | None = None) -> str:
    """One sentence on the correlation across n models of accuracy before masking with `what` ("pss",
    "excess_drop") and its permutation p-value (`stats.correlation_p`); `smallest`, the smallest p-value
    this statistic can reach on these values (`stats.smallest_p`), says when no ordering could be detected."""
    label = {"pss": "PSS", "excess_drop": "the excess drop"}[what]
    if rho is None or p is None:
        return f"Across {n} models, the correlation of {label} with accuracy before masking is undefined " \
               "(fewer than 3 models, or no spread)."
    numbers = f"{method} {rho:+.3f}, {_p(p)} (permutation test over the models' orderings)"
    if p < ALPHA:
        direction = "grows" if rho > 0 else "falls"
        return f"Across {n} models, {label} {direction} with accuracy before masking: {numbers}."
    limit = (f"; with {n} models no ordering can reach p < {ALPHA} ({method}'s smallest possible p on these "
             f"values is {smallest:.3g})" if smallest is not None and smallest >= ALPHA else "")
    return (f"Across {n} models, no correlation of {label} with accuracy before masking was detected "
            f"(alpha {ALPHA}): {numbers}{limit}.")
