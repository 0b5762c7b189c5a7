"""What a synthetic study finds (`minipss study-synth`): the premise per size, the claims as tests over
concepts, and the tables and figures that show them. Everything here reads saved PSS results and
ablations (`study.py` makes them); nothing runs a model.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..run.report import markdown_table
from ..run.stats import ALPHA, above_chance_p, paired_test, two_sample_test
from .world import TIER_DOCS

TIERS = tuple(TIER_DOCS)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# ---------------------------------------------------------------- per-concept measures and their tests


def specific(result: dict) -> list[float]:
    """Per concept: its excess drop under the located vectors minus under magnitude-matched random ones,
    averaged over the ratios (how much more the located vectors hurt their own concept than unrelated
    ones, beyond what vectors of the same magnitudes do)."""
    out = []
    for row in result["concepts"]:
        d = [row["by_ratio"][r]["excess_drop"] - row["matched_by_ratio"][r]["excess_drop"] for r in row["by_ratio"]
             if float(r) > 0]
        out.append(sum(d) / len(d))
    return out


def concept_pss(result: dict) -> list[float]:
    """Per concept: its share of the model's PSS (Eq. 6) before the absolute value, (General_after -
    Concept_after) / Acc_before averaged over the ratios; their mean over concepts is the model's PSS up
    to its sign. (The per-concept |G - C| / General_before of the result rows is not used: with 10
    questions a concept's accuracy is noisy, and the absolute value of noise divided by a small baseline
    makes it largest where nothing is learned.)"""
    out = []
    for row in result["concepts"]:
        d = [row["by_ratio"][r]["g_minus_c"] for r in row["by_ratio"] if float(r) > 0]
        out.append(sum(d) / len(d) / result["acc_before"])
    return out


MEASURES = {"specific": (specific, "excess beyond matched"), "pss": (concept_pss, "PSS")}


def seed_mean(lists: list[list]) -> list[float | None]:
    """Per unit (concept or entity), the mean over seeds of its numbers: lists in the same unit order."""
    out = []
    for xs in zip(*lists):
        xs = [x for x in xs if x is not None]
        out.append(sum(xs) / len(xs) if xs else None)
    return out


def claims(claim: str, what: str, test, *groups) -> list[dict]:
    """The claim tested on each measure (`MEASURES`): `test(*per-group values)` for groups of PSS
    results (each a list over seeds), with its sentence (`finding`)."""
    out = []
    for measure, (values, label) in MEASURES.items():
        t = test(*[seed_mean([values(r) for r in results]) for results in groups])
        out.append({"measure": measure, "test": t, "sentence": finding(claim, t, f"{label}, {what}")})
    return out


def located_vs_matched(results: list[dict], tier: str | None = None) -> dict:
    """Per ratio: the paired test over concepts (seeds averaged) of the excess drop under located minus
    magnitude-matched vectors (`difference`, `ci95`, `p_value`, `n`)."""
    out = {}
    for r in results[0]["concepts"][0]["by_ratio"]:
        if float(r) == 0:
            continue
        keep = lambda res: [row for row in res["concepts"] if tier is None or row["tier"] == tier]
        loc = seed_mean([[row["by_ratio"][r]["excess_drop"] for row in keep(res)] for res in results])
        mat = seed_mean([[row["matched_by_ratio"][r]["excess_drop"] for row in keep(res)] for res in results])
        out[r] = {"measure": "excess_drop", **paired_test(loc, mat)}
    return out


def mean_ci(values) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95% t-interval over seeds (None for fewer than 2 values)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, T975.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


def finding(claim: str, test: dict, what: str) -> str:
    """A sentence on `test` (`difference` of `what`, `ci95`, `p_value`): the claim when p < ALPHA in
    its direction (difference > 0), the opposite when p < ALPHA the other way, else that none was
    detected."""
    d, ci, p = test.get("difference"), test.get("ci95"), test.get("p_value")
    if d is None or p is None:
        return f"Not testable: {claim} (no data)."
    n = test.get("n")
    numbers = (f"{what} {d:+.3f}" + (f", 95% interval [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
               + f", p = {p:.2g}" + (f", n = {n}" if n is not None else ""))
    if p < ALPHA and d > 0:
        return f"Detected: {claim} ({numbers})."
    if p < ALPHA:
        return f"The opposite was detected, against the claim that {claim} ({numbers})."
    return f"Not detected: {claim} ({numbers}; alpha {ALPHA})."


def premise(ablations: list[dict], results: list[dict], params: dict, knowledge: dict) -> dict:
    """Per size: parameters and bits per parameter; per tier, accuracy before and with all MLPs zeroed
    (seeds pooled: right answers and n, with the exact binomial p that it is above chance); the
    located-vs-matched test at each ratio, overall and per tier."""
    acc: dict = {}
    for tier in TIERS:
        acc[tier] = {}
        for name in ablations[0][tier]:
            right = sum(x[tier][name]["correct"] for x in ablations)
            n = sum(x[tier][name]["n"] for x in ablations)
            acc[tier][name] = {"accuracy": right / n, "n": n, "p_above_chance": above_chance_p(right, n)}
    return {"parameters": params["all"], "mlp_parameters": params["mlp"],
            "bits_per_parameter": knowledge["bits"] / params["all"],
            "bits_per_mlp_parameter": knowledge["bits"] / params["mlp"], "chance": 0.25, "accuracy": acc,
            "located_vs_matched": located_vs_matched(results),
            "located_vs_matched_by_tier": {t: located_vs_matched(results, t) for t in TIERS}}


def model_row(results: list[dict]) -> dict:
    """Model-level numbers of a PSS result, mean and t half-width over seeds."""
    pick = {"acc": lambda r: r["acc_before"], "pss": lambda r: r["pss"], "pss_matched": lambda r: r["matched"]["pss"],
            "pss_random": lambda r: r["control"]["pss"], "excess": lambda r: r["excess_drop"],
            "excess_matched": lambda r: r["matched"]["excess_drop"]}
    return {k: mean_ci([f(r) for r in results]) for k, f in pick.items()}


def emergence(by_step: dict[int, list[dict]]) -> dict:
    """Per checkpoint: model-level numbers and the excess beyond matched vectors; the claim (Figure 4):
    the final checkpoint's per-concept excess beyond matched minus the earliest one's, paired."""
    steps = sorted(by_step)
    rows = {str(s): {**model_row(by_step[s]), "specific": paired_test(seed_mean([specific(r) for r in by_step[s]]),
                                                                      [0.0] * len(by_step[s][0]["concepts"]))}
            for s in steps}
    first, last = steps[0], steps[-1]
    return {"rows": rows, "first": first, "last": last, "claims": claims(
        f"specialization is higher at the end of training (step {last}) than at step {first}", "last minus first",
        paired_test, by_step[last], by_step[first])}


def size_study(finals: dict[str, list[dict]], prem: dict) -> dict:
    """Per size: model-level numbers; the claim (Table 1): the largest size's per-concept excess beyond
    matched minus the smallest's, paired over concepts."""
    order = sorted(finals, key=lambda s: prem[s]["parameters"])
    small, large = order[0], order[-1]
    return {"rows": {s: {**model_row(finals[s]), "parameters": prem[s]["parameters"]} for s in order},
            "small": small, "large": large, "claims": claims(
                f"specialization is higher in the larger model ({large}) than in the smaller ({small})",
                "larger minus smaller", paired_test, finals[large], finals[small])}


def frequency(results: list[dict]) -> dict:
    """Per tier (base size): accuracy, the excess beyond matched (its paired test against 0); the claim
    (Figure 5): high tier minus low tier, a two-sample test over their concepts."""
    per = {}
    values = seed_mean([specific(r) for r in results])
    tiers = [row["tier"] for row in results[0]["concepts"]]
    for t in TIERS:
        mine = [v for v, tt in zip(values, tiers) if tt == t]
        per[t] = {"documents": TIER_DOCS[t], "acc": mean_ci([r["tiers"][t]["acc_before"] for r in results]),
                  "pss": mean_ci([r["tiers"][t]["pss"] for r in results]),
                  "specific": paired_test(mine, [0.0] * len(mine))}
    tier_test = lambda vs: two_sample_test([v for v, t in zip(vs, tiers) if t == "high"],
                                           [v for v, t in zip(vs, tiers) if t == "low"])
    return {"rows": per, "claims": claims(
        f"specialization is higher for frequent concepts ({TIER_DOCS['high']} documents) than for rare ones "
        f"({TIER_DOCS['low']})", "high minus low tier (two-sample)", tier_test, results)}


def finetune(before: dict, rows: dict) -> dict:
    """Per learning rate and variant: means over seeds; the claims (Table 2): FT-PV against each other
    variant on the fine-tuned entities' MCQ accuracy, paired over entities (seeds averaged)."""
    out = {"before": {"mcq": mean_ci([sum(before["mcq"]) / len(before["mcq"])]),
                      "open": mean_ci([sum(before["open"]) / len(before["open"])]),
                      "old_acc": mean_ci([before["old_acc"]]), "pss": mean_ci([before["pss"]]),
                      "pss_matched": mean_ci([before["pss_matched"]])},
           "entities": before["concepts"], "by_lr": {}}
    for lr, variants in rows.items():
        table = {name: {"mcq": mean_ci([sum(r["mcq"]) / len(r["mcq"]) for r in rs]),
                        "open": mean_ci([sum(r["open"]) / len(r["open"]) for r in rs]),
                        "old_acc": mean_ci([r["old_acc"] for r in rs]),
                        "forgetting": mean_ci([before["old_acc"] - r["old_acc"] for r in rs]),
                        "pss": mean_ci([r["pss"] for r in rs]), "pss_matched": mean_ci([r["pss_matched"] for r in rs])}
                 for name, rs in variants.items()}
        pv = seed_mean([r["mcq"] for r in variants["FT-PV"]])
        tests = {}
        for name in ("FT-FV", "FT-CV", "FT-RV"):
            test = paired_test(pv, seed_mean([r["mcq"] for r in variants[name]]))
            tests[name] = {"test": test, "sentence": finding(
                f"at lr {lr}, FT-PV teaches the fine-tuned entities more than {name}", test, "MCQ accuracy, PV minus")}
        gain = paired_test(pv, before["mcq"])
        tests["before"] = {"test": gain, "sentence": finding(f"at lr {lr}, FT-PV raises the fine-tuned entities' MCQ "
                                                             "accuracy over the base model", gain, "PV minus before")}
        out["by_lr"][lr] = {"table": table, "claims": tests}
    return out


# ---------------------------------------------------------------- tables


def fmt(mc) -> str:
    m, h = mc if isinstance(mc, (list, tuple)) else (mc, None)
    return "-" if m is None else f"{m:.3f}" if h is None else f"{m:.3f} ± {h:.3f}"


def fmt_test(t: dict) -> str:
    if t.get("difference") is None:
        return "-"
    ci = t.get("ci95")
    return f"{t['difference']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}], p = {t['p_value']:.2g}"


def markdown(r: dict) -> str:
    st, w = r["settings"], r["world"]
    seeds = len(st["seeds"])
    lines = [f"World: {w['entities']} entities, {w['facts']} facts, {w['bits']:.0f} bits. Sizes LAYERSxHIDDEN "
             f"(d_ff 4 x hidden), {st['steps']} steps at batch {st['batch_size']}, {seeds} pretraining seed(s). "
             f"PSS sample: {st['per_group']} concepts per tier and kind; cloze MCQ accuracy (chance 0.25); ratios "
             f"{', '.join(f'{x * 100:g}%' for x in st['ratios'])} of every layer (first {st['skip_layers']} never "
             f"masked); unrelated concepts drawn {st['unrelated']}. Tests over concepts, seeds averaged; "
             f"± is a 95% t-interval over seeds.", "", "## Premise", ""]
    lines += markdown_table(
        ["size", "parameters", "bits / parameter", "tier", "acc before", "acc, all MLPs zeroed (p above chance)"],
        [[size, f"{p['parameters'] / 1e3:.0f}k", f"{p['bits_per_parameter']:.3f}", t,
          f"{p['accuracy'][t]['before']['accuracy']:.3f}", f"{p['accuracy'][t]['all_mlps_zeroed']['accuracy']:.3f} "
          f"(p = {p['accuracy'][t]['all_mlps_zeroed']['p_above_chance']:.2g})"]
         for size, p in r["premise"].items() for t in TIERS])
    ratios = list(next(iter(r["premise"].values()))["located_vs_matched"])
    lines += ["", "Excess drop, located minus magnitude-matched random vectors [95% interval], paired over concepts:", ""]
    lines += markdown_table(["size", *(f"{float(x) * 100:g}%" for x in ratios)],
                            [[size, *map(fmt_test, p["located_vs_matched"].values())] for size, p in r["premise"].items()])
    if r["emergence"]:
        e = r["emergence"]
        lines += ["", f"## Emergence (Figure 4), {st['base']}", ""]
        lines += markdown_table(["step", "acc", "PSS located", "PSS matched", "excess beyond matched [95%], p"],
                                [[step, fmt(row["acc"]), fmt(row["pss"]), fmt(row["pss_matched"]), fmt_test(row["specific"])]
                                 for step, row in e["rows"].items()])
        lines += [""] + [f"- {c['sentence']}" for c in e["claims"]]
    if r["size"]:
        s = r["size"]
        lines += ["", "## Model size (Table 1)", ""]
        lines += markdown_table(["size", "parameters", "acc", "PSS located", "PSS matched", "excess located",
                                 "excess matched"],
                                [[size, f"{row['parameters'] / 1e3:.0f}k", *map(fmt, (row["acc"], row["pss"],
                                  row["pss_matched"], row["excess"], row["excess_matched"]))]
                                 for size, row in s["rows"].items()])
        lines += [""] + [f"- {c['sentence']}" for c in s["claims"]]
    if r["frequency"]:
        f = r["frequency"]
        lines += ["", f"## Frequency (Figure 5), {st['base']}", ""]
        lines += markdown_table(["tier", "documents per entity", "acc", "PSS located", "excess beyond matched [95%], p"],
                                [[t, row["documents"], fmt(row["acc"]), fmt(row["pss"]), fmt_test(row["specific"])]
                                 for t, row in f["rows"].items()])
        lines += [""] + [f"- {c['sentence']}" for c in f["claims"]]
    if r["finetune"]:
        ft = r["finetune"]
        b = ft["before"]
        lines += ["", f"## Fine-tuning (Table 2), {st['base']}", "",
                  f"New documents about {len(ft['entities'])} low-tier entities; {st['ft_steps']} steps, batch 8, "
                  f"{len(st['ft_seeds'])} seed(s) per variant. Forgetting: MCQ accuracy lost on the sample's other "
                  "entities.", ""]
        lines += markdown_table(
            ["lr", "model", "MCQ acc", "open acc", "acc, others", "forgetting", "PSS located", "PSS matched"],
            [["-", "before", fmt(b["mcq"]), fmt(b["open"]), fmt(b["old_acc"]), "-", fmt(b["pss"]), fmt(b["pss_matched"])]]
            + [[lr, name, *map(fmt, (row["mcq"], row["open"], row["old_acc"], row["forgetting"], row["pss"],
                                     row["pss_matched"]))] for lr, by in ft["by_lr"].items() for name, row in by["table"].items()])
        lines.append("")
        for lr, by in ft["by_lr"].items():
            lines += [f"- {c['sentence']}" for c in by["claims"].values()]
    lines += ["", f"Wall time: {r['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def plots(r: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        paths.append(out / name)

    sizes = list(r["premise"])
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for t in TIERS:
        ax[0].plot(sizes, [r["premise"][s]["accuracy"][t]["before"]["accuracy"] for s in sizes], marker="o", label=f"{t}")
        ax[0].plot(sizes, [r["premise"][s]["accuracy"][t]["all_mlps_zeroed"]["accuracy"] for s in sizes], ls="--",
                   marker="x", label=f"{t}, MLPs zeroed")
    ax[0].axhline(0.25, color="grey", ls=":"), ax[0].set_ylabel("MCQ accuracy"), ax[0].legend(fontsize=6)
    for s in sizes:
        tests = r["premise"][s]["located_vs_matched"]
        xs = [float(x) * 100 for x in tests]
        ax[1].errorbar(xs, [t["difference"] for t in tests.values()],
                       yerr=[[t["difference"] - t["ci95"][0] for t in tests.values()],
                             [t["ci95"][1] - t["difference"] for t in tests.values()]], marker="o", capsize=3, label=s)
    ax[1].axhline(0, color="grey", ls=":"), ax[1].set_xscale("log"), ax[1].set_xlabel("mask ratio (%)")
    ax[1].set_xticks(xs, [f"{x:g}" for x in xs]), ax[1].minorticks_off()
    ax[1].set_ylabel("excess drop, located - matched"), ax[1].legend(fontsize=7)
    save(fig, "premise.png")
    if r["emergence"]:
        rows = r["emergence"]["rows"]
        xs = [int(s) for s in rows]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        for seed, curve in r["curves"].items():
            pts = [c for c in curve if "acc" in c]
            for t in TIERS:
                ax[0].plot([c["step"] for c in pts], [c[f"acc_{t}"] for c in pts], marker="o", label=f"{t} (seed {seed})")
        ax[0].axhline(0.25, color="grey", ls=":"), ax[0].set_xlabel("step"), ax[0].set_ylabel("MCQ accuracy")
        ax[0].legend(fontsize=6)
        ax[1].plot(xs, [rows[s]["pss"][0] for s in rows], marker="o", label="PSS located (mean over seeds)")
        ax[1].plot(xs, [rows[s]["pss_matched"][0] for s in rows], marker="o", label="PSS matched (mean over seeds)")
        beyond = [rows[s]["specific"] for s in rows]
        ax[1].errorbar(xs, [t["difference"] for t in beyond],
                       yerr=[[t["difference"] - t["ci95"][0] for t in beyond], [t["ci95"][1] - t["difference"] for t in beyond]],
                       marker="s", capsize=3, label="excess beyond matched (95% over concepts)")
        ax[1].set_xlabel("step"), ax[1].legend(fontsize=7)
        save(fig, "emergence.png")
    if r["finetune"]:
        by = r["finetune"]["by_lr"]
        fig, axes = plt.subplots(1, len(by), figsize=(4.5 * len(by), 3.2), squeeze=False)
        for ax, (lr, d) in zip(axes[0], by.items()):
            names = list(d["table"])
            for j, key in enumerate(("mcq", "open", "forgetting")):
                ax.bar([i + 0.27 * j for i in range(len(names))], [d["table"][n][key][0] for n in names], 0.27,
                       yerr=[d["table"][n][key][1] or 0 for n in names], capsize=2, label=key)
            ax.set_xticks(range(len(names)), names, fontsize=7), ax.set_title(f"lr {lr}"), ax.legend(fontsize=7)
        save(fig, "finetune.png")
    return paths


