"""Across result files of several models (§6): a table, accuracy vs PSS correlations (Figure 2), and
figures for accuracy vs PSS (Figure 2), the sweep curves (Figure 3) and PSS by tier (Figure 5).

    minipss compare runs/a/result.json runs/b/result.json --plots figures/

matplotlib is optional (`pip install "minipss[plot]"`) and imported only by `plot`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .. import files
from ..method.benchmark import TIERS
from ..run import checks
from ..run.stats import pearson, spearman

REQUIRED = ("acc_before", "pss", "pss_by_ratio")
PLOT_EXTRA = 'pip install "minipss[plot]"'
FIGURES = ("fig2_accuracy_vs_pss.png", "fig3_pss_by_ratio.png", "fig5_pss_by_tier.png")  # what `plot` writes
RECORD = {"command": "compare"}  # its figures are made again from whichever results it is given


# ---- reading ---------------------------------------------------------------------------------------

def load_results(paths) -> list[dict]:
    """Read result files of `minipss pss`; a file that is not one is rejected, naming it."""
    results = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such result file")
        try:
            result = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a minipss result (not JSON: {e})") from None
        if not isinstance(result, dict):
            raise ValueError(f"{path}: not a minipss result (expected a JSON object)")
        missing = [k for k in REQUIRED if k not in result]
        if missing:
            raise ValueError(f"{path}: not a minipss result (missing {', '.join(missing)})")
        results.append(result)
    return results


def labels(results: list[dict]) -> list[str]:
    """Model folder name + mode; repeats get a counter so every row stays distinct."""
    base = [f"{Path(str(r.get('model', '?'))).name} {r.get('settings', {}).get('mode', '?')}" for r in results]
    seen: dict[str, int] = {}
    out = []
    for b in base:
        seen[b] = seen.get(b, 0) + 1
        out.append(b if base.count(b) == 1 else f"{b} ({seen[b]})")
    return out


def ratios_of(results: list[dict]) -> list[str]:
    """The union of ratio keys over all results, in increasing order."""
    keys = {k for r in results for k in r["pss_by_ratio"]}
    return sorted(keys, key=float)


# ---- correlations (Figure 2) -----------------------------------------------------------------------

def accuracy_vs_pss(results: list[dict]):
    """(acc_before, PSS) pairs of the results where both are numbers."""
    pairs = [(r["acc_before"], r["pss"]) for r in results if r["acc_before"] is not None and r["pss"] is not None]
    return [a for a, _ in pairs], [p for _, p in pairs]


# ---- table -----------------------------------------------------------------------------------------

def _cell(x, width: int = 8) -> str:
    if x is None:
        return f"{'null':>{width}}"
    if isinstance(x, str):
        return f"{x:>{width}}"
    return f"{x:>{width}.3f}"


def _corr(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def table(results: list[dict]) -> str:
    """One row per result: label, acc_before, PSS, excess drop, PSS per ratio; then the correlations."""
    names = labels(results)
    ratios = ratios_of(results)
    w = max([len("result")] + [len(n) for n in names])
    head = (f"{'result':<{w}} {'acc_bef':>8} {'PSS':>8} {'excess':>8} | "
            + " ".join(f"{f'{float(r):g}':>8}" for r in ratios))
    lines = [head.rstrip(), "-" * len(head.rstrip())]
    for name, r in zip(names, results):
        by = r["pss_by_ratio"]
        lines.append(f"{name:<{w}} {_cell(r['acc_before'])} {_cell(r['pss'])} {_cell(r.get('excess_drop', '-'))} | "
                     + " ".join(_cell(by.get(k, "-")) for k in ratios))
    xs, ys = accuracy_vs_pss(results)
    lines.append("")
    lines.append(f"accuracy before masking vs PSS over {len(xs)} results: "
                 f"Pearson {_corr(pearson(xs, ys))}, Spearman {_corr(spearman(xs, ys))}"
                 + ("" if len(xs) >= 3 else " (needs 3 or more)"))
    return "\n".join(lines)


# ---- figures ---------------------------------------------------------------------------------------

def _nan(x) -> float:
    return math.nan if x is None else float(x)


def figure_class():
    """matplotlib's Figure (its savefig renders PNG with the Agg canvas, no pyplot state); ImportError
    with the install hint where matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plotting needs matplotlib: {PLOT_EXTRA}") from None
    return Figure


def plot(results: list[dict], folder) -> list[Path]:
    """Figures 2, 3 and 5 as PNGs in `folder`; returns their paths. Needs matplotlib."""
    Figure = figure_class()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = labels(results)
    paths = []

    # Figure 2: accuracy before masking vs PSS, one point per result.
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name, r in zip(names, results):
        if r["acc_before"] is not None and r["pss"] is not None:
            ax.scatter(r["acc_before"], r["pss"])
            ax.annotate(name, (r["acc_before"], r["pss"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    xs, ys = accuracy_vs_pss(results)
    ax.set(xlabel="accuracy before masking", ylabel="PSS (mean over ratios)",
           title=f"Pearson {_corr(pearson(xs, ys))}, Spearman {_corr(spearman(xs, ys))}")
    paths.append(_save(fig, folder / FIGURES[0]))

    # Figure 3: PSS against the mask ratio; dashed: random vectors of the same count (the control).
    all_r = [float(k) for k in ratios_of(results)]
    positive = [x for x in all_r if x > 0]
    log_x = len(positive) >= 2 and max(positive) / min(positive) > 20
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for name, r in zip(names, results):
        line = _curve(ax, r["pss_by_ratio"], log_x, "-", name)
        control = r.get("control") or {}
        if "pss_by_ratio" in control:
            _curve(ax, control["pss_by_ratio"], log_x, "--", f"{name} random", color=line.get_color())
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel="mask ratio" + (" (log; ratio 0 not shown)" if log_x and 0.0 in all_r else ""),
           ylabel="PSS", title="PSS by mask ratio")
    ax.legend(fontsize=7)
    paths.append(_save(fig, folder / FIGURES[1]))

    # Figure 5: PSS per tier, one bar per result within each tier group.
    present = {t for r in results for t in r.get("tiers", {})}
    tiers = [t for t in TIERS if t in present] + sorted(present - set(TIERS))
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    width = 0.8 / max(len(results), 1)
    for i, (name, r) in enumerate(zip(names, results)):
        heights = [_nan(r.get("tiers", {}).get(t, {}).get("pss")) for t in tiers]
        ax.bar([k + (i - (len(results) - 1) / 2) * width for k in range(len(tiers))], heights, width, label=name)
    ax.set_xticks(range(len(tiers)), tiers)
    ax.set(xlabel="tier", ylabel="PSS", title="PSS by tier")
    if tiers:
        ax.legend(fontsize=7)
    paths.append(_save(fig, folder / FIGURES[2]))
    return paths


def _curve(ax, by_ratio: dict, log_x: bool, style: str, label: str, **kw):
    points = sorted((float(k), _nan(v)) for k, v in by_ratio.items() if not (log_x and float(k) <= 0))
    (line,) = ax.plot([x for x, _ in points], [y for _, y in points], style, marker="o", ms=3, label=label, **kw)
    return line


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


# ---- command line ----------------------------------------------------------------------------------

def main(args) -> None:
    """`minipss compare RESULT.json... [--plots DIR]`: print the table, then make the figures if asked."""
    results = load_results(args.results)
    plots = getattr(args, "plots", None)
    if plots:  # a folder of its own for the figures, checked before anything is printed or written
        try:
            figure_class()
        except ImportError as e:
            raise SystemExit(f"minipss: error: {e}") from None
        files.output_folder(plots, args.results, "--plots")
        checks.own_folder(plots, RECORD, "--plots")
    print(table(results))
    if plots:
        checks.claim(plots, RECORD)
        paths = plot(results, plots)
        print("\nfigures:")
        for p in paths:
            print(f"  {p}")
