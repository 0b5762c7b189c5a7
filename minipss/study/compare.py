"""Across result files of several models (§6): a table, accuracy vs PSS correlations (Figure 2), and
Figures 2, 3 and 5 (`figures`).

    minipss compare runs/a/result.json runs/b/result.json --plots figures/

matplotlib is optional (`pip install "minipss[plot]"`) and imported only when a figure is drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import files
from ..method.benchmark import TIERS
from ..run import checks
from ..run.stats import pearson, spearman
from . import figures

REQUIRED = ("acc_before", "pss", "pss_by_ratio")
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

def plot(results: list[dict], folder) -> list[Path]:
    """Figures 2, 3 and 5 of these results as PNGs in `folder` (`figures.draw`); returns their paths. Needs
    matplotlib."""
    names = labels(results)
    xs, ys = accuracy_vs_pss(results)
    points = {name: (r["acc_before"], r["pss"], None, None) for name, r in zip(names, results)}
    curves = {}
    for name, r in zip(names, results):
        curves[name] = {"located": {"pss": r["pss_by_ratio"], "g_minus_c": r.get("g_minus_c_by_ratio", {})}}
        for kind, section in (("random", "control"), ("matched", "matched")):
            if "pss_by_ratio" in (r.get(section) or {}):
                curves[name][kind] = {"pss": r[section]["pss_by_ratio"],
                                      "g_minus_c": r[section].get("g_minus_c_by_ratio", {})}
    present = {t for r in results for t in r.get("tiers", {})}
    tiers = [t for t in TIERS if t in present] + sorted(present - set(TIERS))
    bars = {name: {t: v.get("pss") for t, v in r.get("tiers", {}).items()} for name, r in zip(names, results)}
    return figures.draw(points, curves, bars, tiers, folder,
                        f"Pearson {_corr(pearson(xs, ys))}, Spearman {_corr(spearman(xs, ys))}", "PSS (mean over ratios)")


# ---- command line ----------------------------------------------------------------------------------

def main(args) -> None:
    """`minipss compare RESULT.json... [--plots DIR]`: print the table, then make the figures if asked."""
    results = load_results(args.results)
    plots = getattr(args, "plots", None)
    if plots:  # a folder of its own for the figures, checked before anything is printed or written
        try:
            figures.figure_class()
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
