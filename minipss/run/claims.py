"""The sentences a report writes about its tests (METHOD.md §9). Each is made from its test alone: it
claims an effect only when the test gives p < ALPHA in the direction it names, and otherwise says that
none was detected, with the p-value and the interval."""

from __future__ import annotations

import math

from .stats import ALPHA, EXACT_ORDERS

CONTROLS = {"random": "uniform random vectors", "matched": "magnitude-matched random vectors"}
MEASURES = {"excess_drop": "excess drop", "g_minus_c": "G - C", "concept_after": "Concept_after",
            "general_after": "General_after"}
# what a detected difference says (located minus control; its sign picks the word), and what a null says
CLAIMS = {
    "excess_drop": ("hurt their own concept {word} than {name} do, beyond what they do to unrelated questions",
                    ("more", "less"), "no concept-specific difference between located vectors and {name}"),
    "general_after": ("lower accuracy on unrelated questions {word} than {name} do", ("less", "more"),
                      "no difference in accuracy on unrelated questions between located vectors and {name}"),
}
FOLD_NOTE = ("PSS is an absolute value, so its bootstrap interval folds away from 0 near 0: it cannot test "
             "PSS > 0 (the paired tests of the signed excess drop and G - C can).")


def _pct(ratio) -> str:
    return f"{float(ratio) * 100:g}%"


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 0.001 else f"p = {p:.1e}"


def located_vs_control(ratio, control: str, test: dict, measure: str = "excess_drop") -> str:
    """One sentence on the paired test (`stats.paired_test`) of located against `control` ("random",
    "matched") at `ratio` for `measure`: with "excess_drop" (the default), whether located vectors hurt
    their own concept more (or less) than the control beyond what they do to unrelated questions; with
    "general_after", whether they lower accuracy on unrelated questions more (or less); or that no
    difference was detected."""
    name, what = CONTROLS[control], MEASURES[measure]
    claim, (up, down), null = CLAIMS[measure]
    d, ci, p = test.get("difference"), test.get("ci95"), test.get("p_value")
    if d is None or p is None:
        return f"At ratio {_pct(ratio)}: no concept has both a located and a {name} cell to compare."
    numbers = (f"{what} located minus control {d:+.3f}"
               + (f", 95% interval [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
               + f", {_p(p)} (paired sign-flip test over {test.get('n', '?')} concepts)")
    if p < ALPHA:
        return f"At ratio {_pct(ratio)}, located vectors {claim.format(word=up if d > 0 else down, name=name)}: {numbers}."
    excludes_0 = bool(ci) and (ci[0] > 0 or ci[1] < 0)
    return (f"At ratio {_pct(ratio)}, {null.format(name=name)} was detected (alpha {ALPHA}): {numbers}; "
            + ("the percentile interval excludes 0, but with few concepts it is too narrow to decide alone."
               if excludes_0 else "differences outside the interval are unlikely given these data."))


def grows_with_accuracy(what: str, rho: float | None, p: float | None, n: int, method: str = "Spearman") -> str:
    """One sentence on the correlation across n models of accuracy before masking with `what` ("pss",
    "excess_drop") and its permutation p-value (`stats.correlation_p`)."""
    label = {"pss": "PSS", "excess_drop": "the excess drop"}[what]
    if rho is None or p is None:
        return f"Across {n} models, the correlation of {label} with accuracy before masking is undefined " \
               "(fewer than 3 models, or no spread)."
    numbers = f"{method} {rho:+.3f}, {_p(p)} (permutation test over the models' orderings)"
    if p < ALPHA:
        direction = "grows" if rho > 0 else "falls"
        return f"Across {n} models, {label} {direction} with accuracy before masking: {numbers}."
    smallest = 2 / math.factorial(n) if n <= EXACT_ORDERS else 0.0
    limit = (f"; with {n} models no ordering can reach p < {ALPHA} (the smallest possible p is {smallest:.3g})"
             if smallest >= ALPHA else "")
    return (f"Across {n} models, no correlation of {label} with accuracy before masking was detected "
            f"(alpha {ALPHA}): {numbers}{limit}.")
