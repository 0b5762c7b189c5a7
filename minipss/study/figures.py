"""Figures 2, 3 and 5 (METHOD.md §6), drawn one way wherever they appear: `minipss compare` and quickstart
from result files, `minipss study` from its summary. Each takes plain numbers per model (label):

- Figure 2: accuracy before masking against PSS, one point per model (with bootstrap intervals when given);
- Figure 3: against the mask ratio, PSS (Eq. 6, the paper's) and G - C (signed, which PSS folds), located
  vectors solid, the random control dashed, the magnitude-matched control dotted;
- Figure 5: PSS per popularity tier, one bar per model.

matplotlib is optional (`pip install "minipss[plot]"`) and imported only here, when a figure is drawn.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

PLOT_EXTRA = 'pip install "minipss[plot]"'
FIGURES = ("fig2_accuracy_vs_pss.png", "fig3_pss_by_ratio.png", "fig5_pss_by_tier.png")
STYLES = {"located": "-o", "random": "--x", "matched": ":s"}  # Figure 3's line per kind of mask


def figure_class():
    """matplotlib's Figure (its savefig renders PNG with the Agg canvas, no pyplot state); ImportError
    with the install hint where matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plotting needs matplotlib: {PLOT_EXTRA}") from None
    return Figure


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def _save(fig, path: Path) -> Path:
    """The figure as a PNG written whole (a temporary file, then a rename)."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def draw(points: dict, curves: dict, bars: dict, tiers, folder, title: str, pss_label: str) -> list[Path]:
    """Figures 2, 3 and 5 as PNGs in `folder` (`FIGURES`); returns their paths. Per model label:
    `points[label]` = (accuracy, PSS, accuracy interval or None, PSS interval or None); `curves[label][kind]`
    = {"pss": {ratio: value}, "g_minus_c": {ratio: value}} for the kinds of mask that ran; `bars[label]` =
    {tier: PSS}. `title` heads Figure 2, `pss_label` names its PSS axis."""
    Figure = figure_class()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(6.5, 4.8))
    ax = fig.subplots()
    for label, (acc, pss, acc_ci, pss_ci) in points.items():
        if acc is None or pss is None:
            continue
        # the intervals as drawn lines: PSS over all concepts (a ratio of means) may lie outside its own
        # bootstrap percentile interval, which an error bar around the point cannot show
        (point,) = ax.plot(acc, pss, "o", label=label)
        if acc_ci:
            ax.hlines(pss, *acc_ci, color=point.get_color(), lw=1)
        if pss_ci:
            ax.vlines(acc, *pss_ci, color=point.get_color(), lw=1)
    ax.set(xlabel="accuracy before masking", ylabel=pss_label, title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    paths = [_save(fig, folder / FIGURES[0])]

    ratios = {float(r) for kinds in curves.values() for c in kinds.values() for r in c["pss"]}
    positive = [x for x in ratios if x > 0]
    log_x = len(positive) >= 2 and max(positive) / min(positive) > 20
    fig = Figure(figsize=(11, 4.5))
    for ax, what, name in zip(fig.subplots(1, 2), ("pss", "g_minus_c"), ("PSS (Eq. 6)", "General_after - Concept_after")):
        drawn = False
        for label, kinds in curves.items():
            color = None
            for kind, c in kinds.items():
                xy = sorted((float(r), _nan(v)) for r, v in c[what].items() if not (log_x and float(r) <= 0))
                if not xy:  # results made before G - C was recorded
                    continue
                drawn = True
                (line,) = ax.plot([x for x, _ in xy], [y for _, y in xy], STYLES[kind], ms=3, color=color,
                                  label=label if kind == "located" else f"{label} {kind}")
                color = color or line.get_color()
        if what == "g_minus_c":
            ax.axhline(0, color="grey", lw=0.5)
        if log_x and drawn:
            ax.set_xscale("log")
        ax.set(xlabel="mask ratio" + (" (log; ratio 0 not shown)" if log_x and 0.0 in ratios else ""), ylabel=name,
               title=f"{name.split(' (')[0]} by mask ratio")
        if drawn:
            ax.legend(fontsize=6)
    paths.append(_save(fig, folder / FIGURES[1]))

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    width = 0.8 / max(len(bars), 1)
    for i, (label, by_tier) in enumerate(bars.items()):
        heights = [_nan(by_tier.get(t)) for t in tiers]
        ax.bar([k + (i - (len(bars) - 1) / 2) * width for k in range(len(tiers))], heights, width, label=label)
    ax.set_xticks(range(len(tiers)), tiers)
    ax.set(xlabel="tier", ylabel="PSS", title="PSS by popularity tier")
    if tiers:
        ax.legend(fontsize=7)
    paths.append(_save(fig, folder / FIGURES[2]))
    return paths
