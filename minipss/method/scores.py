"""Scores from per-question correctness (Eq. 6): accuracies, PSS in every form and the excess drop
(METHOD.md §6)."""

from __future__ import annotations


def accuracy(correct: list[bool]) -> float | None:
    return sum(correct) / len(correct) if correct else None


def ratio_of(a: float | None, b: float | None) -> float | None:
    """a / b, or None (null in the result file) when either is missing or b is 0."""
    return None if a is None or not b else a / b


def concept_cell(before_c: float, before_g: float, after_c: float, after_g: float, acc_before: float,
                 ratio: float) -> dict:
    """Every score of one concept at one ratio (Eq. 6 and the raw parts; METHOD.md §6)."""
    diff = after_g - after_c
    cell = {
        "concept_after": after_c, "general_after": after_g, "g_minus_c": diff,
        "pss": ratio_of(abs(diff), before_g),  # per-concept denominator: General_before(c)
        "pss_acc_before": ratio_of(abs(diff), acc_before),
        "pss_raw": abs(diff),
        "excess_drop": (before_c - after_c) - (before_g - after_g),
    }
    if ratio == 0:  # nothing masked: PSS is 0 by definition (Figure 3's origin)
        cell.update(pss=0.0, pss_acc_before=0.0, pss_raw=0.0)
    return cell


def model_pss(concept_after: list[float], general_after: list[float], acc_before: float,
              ratio: float) -> float | None:
    """PSS(r) = |mean_c General_after(c, r) - mean_c Concept_after(c, r)| / Acc_before (Eq. 6)."""
    if ratio == 0:
        return 0.0
    gap = abs(sum(general_after) / len(general_after) - sum(concept_after) / len(concept_after))
    return ratio_of(gap, acc_before)


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
