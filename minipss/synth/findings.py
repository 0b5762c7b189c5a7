"""What a synthetic study finds (`minipss study-synth`): the premise per size, the claims as tests over
concepts, and the tables and figures that show them. Everything here reads saved PSS results and
ablations (`study.py` makes them); nothing runs a model.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..run.claims import CHANCE
from ..run.report import markdown_table
from ..run.stats import ALPHA, paired_test, t_quantile, t_test, two_sample_test
from .world import TIER_DOCS

TIERS = tuple(TIER_DOCS)


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
    return m, t_quantile(len(xs) - 1) * sd / math.sqrt(len(xs))


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


def above_chance(ablations: list[dict], tier: str, name: str) -> dict:
    """Accuracy above chance counted over entities, not pooled questions (a tier's questions nest in its
    entities): per entity its accuracy (seeds averaged) minus chance, their mean `difference`, bootstrap
    `ci95` over entities (the interval "to chance" is read from), two-sided sign-flip `p_value`, `n` entities."""
    per = [[c / q for c, q in zip(x[tier][name]["per_concept"], x[tier][name]["questions"])] for x in ablations]
    values = seed_mean(per)
    return paired_test(values, [CHANCE] * len(values))


def premise(ablations: list[dict], results: list[dict], params: dict, knowledge: dict) -> dict:
    """Per size: parameters and bits per parameter; per tier, accuracy before and with all MLPs zeroed
    (seeds pooled: accuracy and questions `n`) with its test against chance over entities (`above_chance`);
    the located-vs-matched test at each ratio, overall and per tier."""
    acc: dict = {}
    for tier in TIERS:
        acc[tier] = {}
        for name in ablations[0][tier]:
            right = sum(x[tier][name]["correct"] for x in ablations)
            n = sum(x[tier][name]["n"] for x in ablations)
            acc[tier][name] = {"accuracy": right / n, "n": n, "above_chance": above_chance(ablations, tier, name)}
    return {"parameters": params["all"], "mlp_parameters": params["mlp"],
            "bits_per_parameter": knowledge["bits"] / params["all"],
            "bits_per_mlp_parameter": knowledge["bits"] / params["mlp"], "chance": CHANCE, "accuracy": acc,
            "located_vs_matched": located_vs_matched(results),
            "located_vs_matched_by_tier": {t: located_vs_matched(results, t) for t in TIERS}}


def model_row(results: list[dict]) -> dict:
    """Model-level numbers of a PSS result, mean and t half-width over seeds."""
    pick = {"acc": lambda r: r["acc_before"], "pss": lambda r: r["pss"], "pss_matched": lambda r: r["matched"]["pss"],
            "pss_random": lambda r: r["control"]["pss"], "excess": lambda r: r["excess_drop"],
            "excess_matched": lambda r: r["matched"]["excess_drop"]}
    return {k: mean_ci([f(r) for r in results]) for k, f in pick.items()}


def model_measures(result: dict) -> dict:
    """One model's numbers for the tests over seeds (METHOD.md §9, "Few units"; synth README, "The tests
    of the claims"): `specific`, the mean over concepts of the excess beyond matched (`specific`);
    `headroom`, that divided by how far the sample's accuracy before masking sits above chance (a model
    that knows little has little to lose: the excess cannot exceed it), None at or below chance; `pss`,
    the paper's PSS."""
    spec = sum(specific(result)) / len(result["concepts"])
    room = result["acc_before"] - CHANCE
    return {"specific": spec, "headroom": spec / room if room > 0 else None, "pss": result["pss"]}


SEED_MEASURES = {"specific": "excess beyond matched", "headroom": "excess beyond matched / (accuracy - chance)",
                 "pss": "PSS"}


def seed_claims(claim: str, what: str, paired: bool, high: list[dict], low: list[dict]) -> list[dict]:
    """The claim tested over pretraining seeds on each measure (`model_measures`, one number per model):
    Student's t, paired by seed or between two groups of models (`stats.t_test`), with its sentence."""
    out = []
    for measure, label in SEED_MEASURES.items():
        t = t_test([model_measures(r)[measure] for r in high], [model_measures(r)[measure] for r in low], paired)
        out.append({"measure": measure, "test": t, "sentence": finding(claim, t, f"{label}, {what}, over seeds")})
    return out


def emergence(by_step: dict[int, list[dict]], curves: dict) -> dict:
    """Per checkpoint: model-level numbers, the per-seed measures and the excess beyond matched over
    concepts; the claim (Figure 4): specialization at the end of training above that at the earlier
    checkpoint, paired over pretraining seeds (both checkpoints have learned: their accuracy is in the rows)."""
    steps = sorted(by_step)
    rows = {str(s): {**model_row(by_step[s]), "per_seed": [model_measures(r) for r in by_step[s]],
                     "specific": paired_test(seed_mean([specific(r) for r in by_step[s]]),
                                             [0.0] * len(by_step[s][0]["concepts"]))}
            for s in steps}
    first, last = steps[0], steps[-1]
    return {"rows": rows, "first": first, "last": last, "claims": seed_claims(
        f"specialization is higher at the end of training (step {last}) than at step {first}", "last minus first",
        True, by_step[last], by_step[first])}


def size_study(finals: dict[str, list[dict]], prem: dict) -> dict:
    """Per size: model-level numbers and per-seed measures; the claim (Table 1): the largest size above
    the smallest, a two-group t test over their pretraining seeds."""
    order = sorted(finals, key=lambda s: prem[s]["parameters"])
    small, large = order[0], order[-1]
    return {"rows": {s: {**model_row(finals[s]), "parameters": prem[s]["parameters"],
                         "per_seed": [model_measures(r) for r in finals[s]]} for s in order},
            "small": small, "large": large, "claims": seed_claims(
                f"specialization is higher in the larger model ({large}) than in the smaller ({small})",
                "larger minus smaller", False, finals[large], finals[small])}


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


def pick_lr(rows: dict[str, dict], tuning: list[bool]) -> str:
    """The learning rate (a key of `rows`, one fine-tuning row per rate) whose row gives the tuning
    entities the best mean MCQ accuracy; the smaller rate on a tie."""
    score = lambda lr: sum(x for x, t in zip(rows[lr]["mcq"], tuning) if t) / max(1, sum(tuning))
    return max(sorted(rows, key=float), key=lambda lr: (score(lr), -float(lr)))


def finetune(before: dict, swept: dict, chosen: dict, rows: dict, tuning: list[bool]) -> dict:
    """Table 2 with each variant at its own learning rate: the sweep (per variant and rate, MCQ accuracy of
    the tuning entities), the chosen rates, and on the other (compared) entities, per variant means over
    fine-tuning seeds; the claims: FT-PV against each other variant and against the base model on those
    entities' MCQ accuracy, paired over entities (seeds averaged)."""
    keep = lambda xs, want=False: [x for x, t in zip(xs, tuning) if t == want]
    mean = lambda xs: sum(xs) / len(xs)
    out = {"before": {"mcq": mean_ci([mean(keep(before["mcq"]))]), "open": mean_ci([mean(keep(before["open"]))]),
                      "old_acc": mean_ci([before["old_acc"]])},
           "entities": before["concepts"], "tuning_entities": keep(before["concepts"], True),
           "compared_entities": keep(before["concepts"]),
           "sweep": {name: {lr: mean(keep(r["mcq"], True)) for lr, r in by.items()} for name, by in swept.items()},
           "sweep_before": mean(keep(before["mcq"], True)), "chosen_lr": chosen, "table": {}, "claims": {}}
    for name, rs in rows.items():
        out["table"][name] = {"lr": chosen[name], "mcq": mean_ci([mean(keep(r["mcq"])) for r in rs]),
                              "open": mean_ci([mean(keep(r["open"])) for r in rs]),
                              "old_acc": mean_ci([r["old_acc"] for r in rs]),
                              "forgetting": mean_ci([before["old_acc"] - r["old_acc"] for r in rs])}
    pv = seed_mean([keep(r["mcq"]) for r in rows["FT-PV"]])
    for name in ("FT-FV", "FT-CV", "FT-RV"):
        test = paired_test(pv, seed_mean([keep(r["mcq"]) for r in rows[name]]))
        out["claims"][name] = {"test": test, "sentence": finding(
            f"FT-PV (lr {chosen['FT-PV']}) teaches the fine-tuned entities more than {name} (lr {chosen[name]})",
            test, "MCQ accuracy, PV minus")}
    gain = paired_test(pv, keep(before["mcq"]))
    out["claims"]["before"] = {"test": gain, "sentence": finding(
        "FT-PV raises the fine-tuned entities' MCQ accuracy over the base model", gain, "PV minus before")}
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


def fmt_ci(t: dict) -> str:
    """An interval alone, e.g. for accuracy minus chance."""
    ci = t.get("ci95")
    return "-" if t.get("difference") is None else f"{t['difference']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def pct(ratio) -> str:
    return f"{float(ratio) * 100:g}%"


def rate(x, ci) -> str:
    return "-" if x is None else f"{x:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def calibration_lines(c: dict) -> list[str]:
    """The calibration's tables: per ratio, control and measure, power and false-positive rate at the
    real-model design, and power against the number of concepts; the decision's rates."""
    d = c["design"]
    lines = [f"Each draw is one real-model study: {d['concepts']} concepts ({d['per_tier']} per tier) of one model, "
             f"drawn with replacement; {d['draws']} draws per condition; detected: p < {d['alpha']} with located "
             f"above the control. Models: {', '.join(f'{k} {v}' for k, v in d['models'].items())}. Rates with "
             "Wilson 95% intervals.", ""]
    names = {"random": "uniform", "matched": "matched", "pseudo": "pseudo"}
    measures = {"excess_drop": "accuracy", "prob_excess_drop": "p(correct)"}
    first = next(iter(next(iter(c["by_ratio"].values())).values()))["excess_drop"]
    sizes, shares = list(first["power_by_concepts"]), list(first["power_by_effect"])
    lines += markdown_table(
        ["ratio", "control", "measure", "effect", "power", "false positives (worst null)", "untrained", "swapped",
         *(f"power, {n} concepts" for n in sizes), *(f"power at {float(f):g} x effect" for f in shares)],
        [[pct(r), names[ctl], measures[m], f"{x['effect']:+.3f}", rate(x["power"], x["power_ci95"]),
          rate(x["false_positive_rate"], x["false_positive_ci95"]) + (f" ({x['false_positive_null']})"
                                                                      if x["false_positive_null"] else ""),
          *(f"{x['false_positive_by_null'][n]['rate']:.2f}" if n in x["false_positive_by_null"] else "-"
            for n in ("untrained", "swapped")),
          *(f"{x['power_by_concepts'][n]:.2f}" for n in sizes),
          *(f"{x['power_by_effect'][f]:.2f} ({float(f) * x['effect']:+.3f})" for f in shares)]
         for r, by in c["by_ratio"].items() for ctl, ms in by.items() for m, x in ms.items()])
    dec = c["decision"]
    lines += ["", "The decision (every control beaten at a ratio above the floor, Holm across ratios), how often it "
              "detects: " + "; ".join(f"{name} {rate(v['rate'], v['ci95'])}" + (f" ({v['undecided']} of {v['draws']} "
                                      "draws undecided: every ratio floored)" if v["undecided"] else "")
                                      for name, v in dec.items() if not name.startswith("power_by"))
              + "; trained, by number of concepts: "
              + ", ".join(f"{n}: {v:.2f}" for n, v in dec["power_by_concepts"].items())
              + "; at a share of the trained effect: " + ", ".join(f"{f} x: {v:.2f}" for f, v in dec["power_by_effect"].items())
              + "."]
    return lines


def markdown(r: dict) -> str:
    st, w = r["settings"], r["world"]
    seeds = len(st["seeds"])
    lines = [f"World: {w['entities']} entities, {w['facts']} facts, {w['bits']:.0f} bits. Sizes LAYERSxHIDDEN "
             f"(d_ff 4 x hidden), {st['steps']} steps at batch {st['batch_size']}, {seeds} pretraining seed(s). "
             f"PSS sample: {st['per_group']} concepts per tier and kind, the real-model protocol (cloze with "
             f"p(correct), split-half by fact, uniform, matched and pseudo controls); ratios "
             f"{', '.join(pct(x) for x in st['ratios'])} of every layer (first {st['skip_layers']} never "
             f"masked); unrelated concepts drawn {st['unrelated']}. ± is a 95% t-interval over seeds.",
             "", "## Premise", ""]
    lines += markdown_table(
        ["size", "parameters", "bits / parameter", "tier", "acc before", "acc, all MLPs zeroed",
         "all MLPs zeroed minus chance, over entities [95%]"],
        [[size, f"{p['parameters'] / 1e3:.0f}k", f"{p['bits_per_parameter']:.3f}", t,
          f"{p['accuracy'][t]['before']['accuracy']:.3f}", f"{p['accuracy'][t]['all_mlps_zeroed']['accuracy']:.3f}",
          fmt_test(p["accuracy"][t]["all_mlps_zeroed"]["above_chance"])]
         for size, p in r["premise"].items() for t in TIERS])
    ratios = list(next(iter(r["premise"].values()))["located_vs_matched"])
    lines += ["", "Excess drop, located minus magnitude-matched random vectors [95% interval], paired over concepts "
              "(seeds averaged):", ""]
    lines += markdown_table(["size", *(pct(x) for x in ratios)],
                            [[size, *map(fmt_test, p["located_vs_matched"].values())] for size, p in r["premise"].items()])
    if r.get("calibration"):
        lines += ["", "## Calibration: the real-model protocol where the truth is known", ""]
        lines += calibration_lines(r["calibration"])
    seed_table = lambda rows: markdown_table(
        ["", "acc", "PSS located", "PSS matched", "excess beyond matched (per seed)", "headroom-normalised (per seed)"],
        [[k, fmt(row["acc"]), fmt(row["pss"]), fmt(row["pss_matched"]),
          " / ".join(f"{m['specific']:+.3f}" for m in row["per_seed"]),
          " / ".join("-" if m["headroom"] is None else f"{m['headroom']:+.3f}" for m in row["per_seed"])]
         for k, row in rows.items()])
    if r["emergence"]:
        e = r["emergence"]
        lines += ["", f"## Emergence (Figure 4), {st['base']}: step {e['first']} against {e['last']}", ""]
        lines += seed_table(e["rows"])
        lines += [""] + [f"- {c['sentence']}" for c in e["claims"]]
    if r["size"]:
        s = r["size"]
        lines += ["", "## Model size (Table 1)", ""]
        lines += seed_table(s["rows"])
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
                  f"New documents about {len(ft['entities'])} low-tier entities; {st['ft_steps']} steps, batch 8. "
                  f"Learning rates swept on {len(ft['tuning_entities'])} tuning entities (MCQ accuracy; "
                  f"{ft['sweep_before']:.3f} before):", ""]
        lrs = list(next(iter(ft["sweep"].values())))
        lines += markdown_table(["variant", *(f"lr {lr}" for lr in lrs), "chosen"],
                                [[name, *(f"{by[lr]:.3f}" for lr in lrs), ft["chosen_lr"][name]]
                                 for name, by in ft["sweep"].items()])
        lines += ["", f"At the chosen rates, on the {len(ft['compared_entities'])} other entities, "
                  f"{len(st['ft_seeds'])} seed(s) per variant; forgetting: MCQ accuracy lost on the sample's "
                  "other entities.", ""]
        lines += markdown_table(
            ["model", "lr", "MCQ acc", "open acc", "acc, others", "forgetting"],
            [["before", "-", fmt(b["mcq"]), fmt(b["open"]), fmt(b["old_acc"]), "-"]]
            + [[name, row["lr"], *map(fmt, (row["mcq"], row["open"], row["old_acc"], row["forgetting"]))]
               for name, row in ft["table"].items()])
        lines += [""] + [f"- {c['sentence']}" for c in ft["claims"].values()]
    if r.get("seconds_by_part"):
        lines += ["", "Time per part (this invocation): " + "; ".join(f"{k} {v:.0f} s" for k, v in r["seconds_by_part"].items())
                  + "."]
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
        table = r["finetune"]["table"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        names = list(table)
        for j, key in enumerate(("mcq", "open", "forgetting")):
            ax.bar([i + 0.27 * j for i in range(len(names))], [table[n][key][0] for n in names], 0.27,
                   yerr=[table[n][key][1] or 0 for n in names], capsize=2, label=key)
        ax.set_xticks(range(len(names)), [f"{n}\nlr {table[n]['lr']}" for n in names], fontsize=7), ax.legend(fontsize=7)
        save(fig, "finetune.png")
    return paths


