"""`minipss study`: the paper's cross-model findings (§6) on several models, one benchmark, one setting.

    minipss study [--models smollm2-135m,gemma-3-270m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b] [--out runs/study]

Runs `minipss pss` for each model (a name that `python -m minipss.weights` knows, converted on first use,
or a model folder) into `OUT/<model>/result.json`; each run resumes from its own work folder, and a model
whose result already holds these settings is not run again. Then it writes, in `OUT/`:

- Table 1: accuracy before masking and PSS per model, with the spread over concepts (standard deviation
  and a bootstrap 95% interval), the excess drop and the controls (uniform random, magnitude-matched)
  beside them;
- the paired tests of located against each control per ratio, and the sentences they allow (METHOD.md §9);
- Figure 2: accuracy against PSS across models, Pearson and Spearman with bootstrap intervals over concepts
  and permutation p-values over the models' orderings;
- Figure 3: PSS and General_after - Concept_after against the mask ratio, one curve per model (dashed:
  random; dotted: matched);
- Figure 5: PSS per popularity tier;
- `study.md` (the tables, the figures embedded) and `study.json` (every number in it).

Every model is scored in plain text-completion mode (the prompts of `minipss.method.prompts`, no chat template),
also those that are instruction-tuned; the report says which are.

Where models ran with different ratio sets (e.g. fewer for a large model on a CPU), every cross-model
number uses the ratios all of them share, and the report names them. The bootstrap resamples concepts
with replacement (one draw of concepts shared by all models, for the correlations), 1000 times, seeded.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict
from pathlib import Path

from .. import files, interrupts, lock
from ..method.benchmark import TIERS, benchmark_path, load_benchmark
from ..method.pss import mean, model_pss
from ..model.families import read_config
from ..model.fastest import resolve_dtype
from ..run import checks
from ..run.claims import FOLD_NOTE, floored, grows_with_accuracy, located_vs_control, verdict, verdict_sentence
from ..run.fingerprint import file_digest
from ..run.options import dtype_option, numbers
from ..run.pipeline import run_pss
from ..run.report import markdown_table, significance
from ..run.settings import Settings
from ..run.stats import correlation_p, pearson, smallest_p, spearman
from ..weights.real_models import MODELS, ensure
from . import figures


DEFAULT_MODELS = ("smollm2-135m", "gemma-3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
DEFAULT_RATIOS = "0.001,0.003,0.01,0.1"  # the lower three keep General_after above chance (README)
# settings a stored result must share to be reused as it is
SAME = ("mode", "ratios", "skip_layers", "seed", "concepts", "n_unrelated", "control", "matched_control",
        "pseudo_control", "split_half", "locator", "ablation", "token_rule", "cloze_mean", "dtype")


# ---- running ---------------------------------------------------------------------------------------

def model_folder(name: str) -> Path:
    """A known real model's converted folder (converting it if needed), or an existing folder."""
    if name in MODELS:
        return ensure(name)
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--models: {name!r} is neither a known model ({', '.join(MODELS)}) nor a model folder")
    return folder.absolute()


def label_of(name: str) -> str:
    return Path(name).name if "/" in name else name


def run_models(models, bench, out, settings_for, quiet=False) -> dict[str, dict]:
    """`minipss pss` per model into `out/<label>/result.json`; returns {label: result}."""
    results = {}
    for name in models:
        label, settings = label_of(name), settings_for(name)
        path = Path(out) / label / "result.json"
        if path.is_file():
            stored = {**asdict(Settings()), **json.loads(path.read_text()).get("settings", {})}  # older: defaults
            if all(stored[k] == v for k, v in asdict(settings).items() if k in SAME):
                results[label] = json.loads(path.read_text())
                if not quiet:
                    print(f"{label}: reusing {path}", flush=True)
                continue
        if not quiet:
            print(f"{label}: minipss pss -> {path}", flush=True)
        results[label] = run_pss(model_folder(name), bench, path, settings, quiet)
    return results


# ---- numbers ---------------------------------------------------------------------------------------

def common_ratios(results: dict[str, dict]) -> list[str]:
    """Ratio keys every result has, in increasing order."""
    keys = set.intersection(*(set(r["pss_by_ratio"]) for r in results.values()))
    return sorted(keys, key=float)


def scores(rows: list[dict], ratios: list[str], kind: str = "by_ratio") -> dict:
    """Accuracy before masking, PSS (Eq. 6, mean over `ratios`) and excess drop of a group of concept rows."""
    acc = mean(r["concept_before"] for r in rows)
    pss = mean(model_pss([r[kind][k]["concept_after"] for r in rows], [r[kind][k]["general_after"] for r in rows],
                         acc, float(k)) for k in ratios)
    excess = mean(r[kind][k]["excess_drop"] for r in rows for k in ratios)
    return {"acc": acc, "pss": pss, "excess": excess}


def interval(values) -> list[float] | None:
    values = sorted(v for v in values if v is not None)
    if len(values) < 20:
        return None
    return [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]]


def std(values) -> float | None:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def summarise(results: dict[str, dict], instruct: dict[str, bool | None], n_boot: int = 1000, seed: int = 0) -> dict:
    """Every number of the report: per model, per ratio, per tier, and the correlations across models."""
    ratios = common_ratios(results)
    rng = random.Random(seed)
    models = {}
    for label, res in results.items():
        rows = res["concepts"]
        own = scores(rows, ratios)
        boots = [scores([rows[rng.randrange(len(rows))] for _ in rows], ratios) for _ in range(n_boot)]
        control = scores(rows, ratios, "control_by_ratio") if all("control_by_ratio" in r for r in rows) else None
        matched = scores(rows, ratios, "matched_by_ratio") if all("matched_by_ratio" in r for r in rows) else None
        pseudo = scores(rows, ratios, "pseudo_by_ratio") if all("pseudo_by_ratio" in r for r in rows) else None
        own_ratios = sorted(res["pss_by_ratio"], key=float)
        general = res.get("general_after_by_ratio", {})  # results made before these fields lack them
        floors = {k: floored(general.get(k)) for k in own_ratios}
        tests = significance(rows, own_ratios)  # recomputed from the rows: older results lack them
        models[label] = {
            "instruction_tuned": instruct.get(label),
            "concepts": len(rows),
            "ratios": own_ratios,
            "acc_before": own["acc"], "pss": own["pss"], "excess_drop": own["excess"],
            "acc_ci": interval(b["acc"] for b in boots), "pss_ci": interval(b["pss"] for b in boots),
            "excess_ci": interval(b["excess"] for b in boots),
            "acc_std_over_concepts": std(r["concept_before"] for r in rows),
            "pss_std_over_concepts": std(mean(r["by_ratio"][k]["pss"] for k in ratios) for r in rows),
            "control_pss": control and control["pss"], "control_excess_drop": control and control["excess"],
            "matched_pss": matched and matched["pss"], "matched_excess_drop": matched and matched["excess"],
            "pseudo_pss": pseudo and pseudo["pss"], "pseudo_excess_drop": pseudo and pseudo["excess"],
            "by_ratio": {k: {"pss": res["pss_by_ratio"][k], "g_minus_c": res["g_minus_c_by_ratio"][k],
                             "excess_drop": res["excess_by_ratio"][k],
                             "concept_after": res.get("concept_after_by_ratio", {}).get(k),
                             "general_after": general.get(k), "floored": floors[k],
                             **{f"{name}_{what}": res.get(name, {}).get(f"{key}_by_ratio", {}).get(k)
                                for name in ("control", "matched", "pseudo")
                                for what, key in (("pss", "pss"), ("g_minus_c", "g_minus_c"),
                                                  ("excess_drop", "excess"))}}
                         for k in own_ratios},
            "tests": tests,
            "verdict": verdict(tests, floors, graded="prob_before" in res),  # graded as `build_result` decides
            "tiers": {t: {"concepts": len(group), **scores(group, ratios)}
                      for t in TIERS if (group := [r for r in rows if r["tier"] == t])},
            "warning": res.get("warning"),
        }

    # correlations across models, with a bootstrap over the concepts every model was scored on
    shared = sorted(set.intersection(*({r["concept"] for r in res["concepts"]} for res in results.values())))
    by_name = {label: {r["concept"]: r for r in res["concepts"]} for label, res in results.items()}
    xs = [m["acc_before"] for m in models.values()]
    corr = {}
    for what in ("pss", "excess_drop"):
        ys = [m[what] for m in models.values()]
        draws = {"pearson": [], "spearman": []}
        for _ in range(n_boot if shared else 0):
            pick = [shared[rng.randrange(len(shared))] for _ in shared]
            s = [scores([by_name[label][c] for c in pick], ratios) for label in results]
            bx, by = [v["acc"] for v in s], [v["pss" if what == "pss" else "excess"] for v in s]
            if None not in bx and None not in by:
                draws["pearson"].append(pearson(bx, by))
                draws["spearman"].append(spearman(bx, by))
        corr[what] = {"pearson": pearson(xs, ys) if None not in ys else None,
                      "spearman": spearman(xs, ys) if None not in ys else None,
                      "pearson_p": correlation_p(xs, ys, pearson) if None not in ys else None,
                      "spearman_p": correlation_p(xs, ys, spearman) if None not in ys else None,
                      "pearson_min_p": smallest_p(xs, ys, pearson) if None not in ys else None,
                      "spearman_min_p": smallest_p(xs, ys, spearman) if None not in ys else None,
                      "pearson_ci": interval(draws["pearson"]), "spearman_ci": interval(draws["spearman"])}
    return {"common_ratios": ratios, "shared_concepts": shared, "bootstrap": n_boot, "models": models,
            "accuracy_vs": corr}


# ---- report ----------------------------------------------------------------------------------------

def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pv(p) -> str:
    """A p-value to two significant digits (1e-05 stays 1e-05, not 0.000)."""
    return "n/a" if p is None else f"{p:.2g}"


def _ci(ci) -> str:
    return "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _dtypes(dtype) -> str:
    """One dtype, or per model where they differ (`auto` resolves per model)."""
    if isinstance(dtype, str) or len(set(dtype.values())) == 1:
        return dtype if isinstance(dtype, str) else next(iter(dtype.values()))
    return ", ".join(f"{v} ({k})" for k, v in dtype.items())


def _pct(key: str) -> str:
    return f"{float(key) * 100:g}%"


def markdown(summary: dict, settings: dict, figures: list[Path]) -> str:
    """The study report: settings, Table 1, correlations, per-ratio and per-tier tables, the figures."""
    models, ratios = summary["models"], summary["common_ratios"]
    shared = ", ".join(_pct(k) for k in ratios)
    lines = ["# Parameter specialization across models", "",
             f"Benchmark `{Path(settings['bench']).name}`, mode `{settings['mode']}`, dtype {_dtypes(settings['dtype'])}, "
             f"first {settings['concepts'] or 'all'} concepts, skip {settings['skip_layers']} layers, seed {settings['seed']}, "
             f"{'with' if settings['control'] else 'without'} the random-vector control, "
             f"{'with' if settings.get('matched_control') else 'without'} the magnitude-matched control, "
             f"{'with' if settings.get('pseudo_control') else 'without'} the pseudo-concept control, "
             f"locator {settings.get('locator', 'diff')}"
             f"{', split-half (located on one half of the questions, scored on the other)' if settings.get('split_half') else ''}. "
             "Every model is scored as plain text "
             "completion, without a chat template. Cross-model numbers use the mask ratios all models share: "
             f"{', '.join(_pct(k) for k in ratios)}. Intervals: bootstrap 95% over concepts ({summary['bootstrap']} draws).", "",
             "## Table 1", ""]
    lines += markdown_table(
        ["model", "instruction-tuned", "concepts", "ratios run", "accuracy before", f"PSS at {shared}",
         f"excess drop at {shared}", "random: PSS", "random: excess drop", "matched: PSS", "matched: excess drop"],
        [[label, {True: "yes", False: "no", None: "?"}[m["instruction_tuned"]], m["concepts"],
          ", ".join(_pct(k) for k in m["ratios"]),
          f"{_f(m['acc_before'])} ± {_f(m['acc_std_over_concepts'])}{_ci(m['acc_ci'])}",
          f"{_f(m['pss'])} ± {_f(m['pss_std_over_concepts'])}{_ci(m['pss_ci'])}", f"{_f(m['excess_drop'])}{_ci(m['excess_ci'])}",
          _f(m["control_pss"]), _f(m["control_excess_drop"]), _f(m.get("matched_pss")), _f(m.get("matched_excess_drop"))]
         for label, m in models.items()])
    lines += ["", "± is the standard deviation over concepts (of a concept's accuracy, and of its own PSS with the "
              "per-concept denominator); the model's PSS itself is Eq. 6 over all concepts. " + FOLD_NOTE, ""]
    warnings = [f"- {label}: {m['warning']}" for label, m in models.items() if m.get("warning")]
    lines += (["Warnings:", *warnings, ""] if warnings else [])

    lines += ["## Accuracy against PSS and excess drop across models (Figure 2)", "",
              f"{len(models)} models; bootstrap over the {len(summary['shared_concepts'])} concepts all were scored on.", ""]
    lines += markdown_table(["accuracy before vs", "Pearson [bootstrap]", "p", "Spearman [bootstrap]", "p"],
                            [[what.replace("_", " "), f"{_f(c['pearson'])}{_ci(c['pearson_ci'])}", _pv(c.get("pearson_p")),
                              f"{_f(c['spearman'])}{_ci(c['spearman_ci'])}", _pv(c.get("spearman_p"))]
                             for what, c in summary["accuracy_vs"].items()])
    lines += ["", "p: permutation test over the orderings of the models (exact up to 8 models).", ""]
    lines += [f"- {grows_with_accuracy(what, c['spearman'], c.get('spearman_p'), len(models), smallest=c.get('spearman_min_p'))}"
              for what, c in summary["accuracy_vs"].items()]

    lines += ["", "## Located against the controls (paired tests over concepts)", "",
              "Per concept, located minus control; mean over concepts, bootstrap 95% interval, two-sided paired "
              "sign-flip p-value, and mde80, the smallest difference the test detects with 80% power at alpha "
              "0.05 (METHOD.md §9). p(correct) is the graded outcome: the probability the model gives the correct "
              "option among the four. A ratio marked floored has General_after under the located vectors within "
              "0.05 of chance: there a concept-specific difference cannot show.", ""]
    sentences, rows = [], []
    for label, m in models.items():
        for k, by in m.get("tests", {}).items():
            general = m["by_ratio"].get(k, {}).get("general_after")
            for kind, t in by.items():
                tested = [t["excess_drop"], t.get("prob_excess_drop"), t.get("general_after")]
                rows.append([label, _pct(k) + (" (floored)" if floored(general) else ""), kind, *(
                    v for x, power in zip(tested, (True, True, False))
                    for v in ((f"{_f(x['difference'])}{_ci(x['ci95'])}", _pv(x["p_value"]))
                              + ((_f(x.get("mde80")),) if power else ()) if x else ("-",) * (2 + power)))])
                if float(k) > 0:  # at ratio 0 nothing is masked: nothing to say
                    sentences += [f"- {label}: {located_vs_control(k, kind, t[measure], measure, general)}"
                                  for measure in ("general_after", "excess_drop", "prob_excess_drop") if measure in t]
    lines += markdown_table(["model", "ratio", "control", "excess drop: difference", "p", "mde80",
                             "p(correct) excess drop: difference", "p", "mde80", "General_after: difference", "p"], rows)
    lines += ["", *sentences] if sentences else ["", "No control ran: nothing to test."]
    lines += ["", "The decision on concept specificity, one per model (METHOD.md §9):", ""]
    lines += [f"- {label}: {verdict_sentence(m['verdict'])}" for label, m in models.items() if m.get("verdict")]

    lines += ["", "## By mask ratio (Figure 3)", ""]
    lines += markdown_table(["model", "ratio", "PSS", "G - C", "excess drop", "random: PSS", "random: G - C",
                             "random: excess drop"],
                            [[label, _pct(k), *map(_f, (r["pss"], r["g_minus_c"], r["excess_drop"], r["control_pss"],
                                                        r["control_g_minus_c"], r["control_excess_drop"]))]
                             for label, m in models.items() for k, r in m["by_ratio"].items()])

    lines += ["", f"## By popularity tier (Figure 5), at the shared ratios {shared}", ""]
    lines += markdown_table(["model", *(f"{t}: acc / PSS / excess" for t in TIERS)],
                            [[label, *(f"{_f(t['acc'])} / {_f(t['pss'])} / {_f(t['excess'])}"
                                       if (t := m["tiers"].get(tier)) else "-" for tier in TIERS)]
                             for label, m in models.items()])
    if figures:
        lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
        lines += ["", "Figure 2's vertical lines are PSS's bootstrap intervals. " + FOLD_NOTE]
    return "\n".join(lines) + "\n"


def plot(summary: dict, folder: Path) -> list[Path]:
    """Figures 2, 3 and 5 of the study as PNGs in `folder` (`figures.draw`). Needs matplotlib."""
    models = summary["models"]
    points = {label: (m["acc_before"], m["pss"], m["acc_ci"], m["pss_ci"]) for label, m in models.items()}
    curves = {}
    for label, m in models.items():
        by = m["by_ratio"]
        curves[label] = {"located": {"pss": {k: r["pss"] for k, r in by.items()},
                                     "g_minus_c": {k: r["g_minus_c"] for k, r in by.items()}}}
        for kind, name in (("random", "control"), ("matched", "matched")):
            if all(r.get(f"{name}_pss") is not None for r in by.values()):
                curves[label][kind] = {"pss": {k: r[f"{name}_pss"] for k, r in by.items()},
                                       "g_minus_c": {k: r[f"{name}_g_minus_c"] for k, r in by.items()}}
    bars = {label: {t: v["pss"] for t, v in m["tiers"].items()} for label, m in models.items()}
    c = summary["accuracy_vs"]["pss"]
    return figures.draw(points, curves, bars, TIERS, folder,
                        f"Pearson {_f(c['pearson'])}{_ci(c['pearson_ci'])}, Spearman {_f(c['spearman'])}",
                        "PSS (mean over " + ", ".join(map(_pct, summary["common_ratios"])) + ")")


def write_report(results: dict[str, dict], out, settings: dict, instruct: dict, n_boot: int = 1000) -> Path:
    """study.json, the PNGs (when matplotlib is there) and study.md in `out`; returns study.md's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, instruct, n_boot)
    try:
        figures = plot(summary, out)
    except ImportError as e:
        print(f"no figures: {e}")
        figures = []
    path = out / "study.md"
    with interrupts.writing(out):
        files.write_whole(out / "study.json", json.dumps({"settings": settings, **summary}, indent=1))
        files.write_whole(path, markdown(summary, settings, figures))
    return path


# ---- command line ----------------------------------------------------------------------------------

def _per_model(items, convert, what: str) -> dict:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--{what}-for {item!r}: expected NAME=VALUE")
        out[name] = convert(value)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated names from `python -m minipss.weights --list` or model folders")
    p.add_argument("--out", default="runs/study", help="folder for the per-model results and the report")
    p.add_argument("--bench", default=None, help="benchmark JSONL (default: the bundled minispecwiki)")
    p.add_argument("--mode", default="cloze", choices=["generate", "logits", "cloze"])
    p.add_argument("--ratios", type=numbers, default=numbers(DEFAULT_RATIOS), help=f"mask ratios (default {DEFAULT_RATIOS})")
    p.add_argument("--ratios-for", action="append", metavar="MODEL=R1,R2", help="other ratios for one model (repeatable)")
    p.add_argument("--concepts", type=int, default=12, help="first N concepts, 6 or more (default 12: 4 per tier); 0 for all")
    p.add_argument("--no-control", action="store_true", help="leave out the random-vector control")
    p.add_argument("--matched-control", action="store_true", help="add the magnitude-matched random control")
    p.add_argument("--pseudo-control", action="store_true",
                   help="add the pseudo-concept control (questions drawn one each from other concepts)")
    p.add_argument("--split-half", action="store_true", help="locate on one half of the questions, score on the other")
    p.add_argument("--locator", default="diff", choices=["diff", "zscore"], help="diff (Eq. 5, default) or zscore")
    p.add_argument("--skip-layers", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    dtype_option(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws over concepts (default 1000)")
    p.add_argument("--quiet", action="store_true")


def main(a) -> None:
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    if len(models) < 2:
        raise ValueError("--models: a study needs two or more models")
    ratios_for = _per_model(a.ratios_for, lambda v: [float(x) for x in v.split(",") if x.strip()], "ratios")
    unknown = set(ratios_for) - set(models)
    if unknown:
        raise ValueError(f"--ratios-for names {', '.join(sorted(unknown))}, which --models does not list")
    checks.ratios("--ratios", a.ratios)
    for name, rs in ratios_for.items():
        checks.ratios(f"--ratios-for {name}", rs)
    for name in models:
        if name not in MODELS and not (Path(name) / "config.json").is_file():
            raise ValueError(f"--models: {name!r} is neither a known model ({', '.join(MODELS)}) nor a model folder")
    labels = [label_of(m) for m in models]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(f"--models: two models would share the result folder {Path(a.out) / twice[0]}; "
                         "give folders with different names")
    if a.concepts != 0:
        checks.integer("--concepts", a.concepts, 6)
    for option, value, low in (("--skip-layers", a.skip_layers, 0), ("--batch-size", a.batch_size, 1),
                               ("--bootstrap", a.bootstrap, 1)):
        checks.integer(option, value, low)
    checks.seed("--seed", a.seed)
    checks.check_device(a.device)
    bench = files.input_file(a.bench, "benchmark") if a.bench else benchmark_path("minispecwiki")
    load_benchmark(bench)  # read whole: a bad line is named before any model runs
    files.output_folder(a.out, [bench] + [Path(m) for m in models if m not in MODELS], "--out")
    record = {"command": "study", "bench": file_digest(bench), "mode": a.mode, "skip_layers": a.skip_layers,
              "seed": a.seed, "concepts": a.concepts or None, "control": not a.no_control, "split_half": a.split_half,
              **({"pseudo_control": True} if a.pseudo_control else {}),
              "locator": a.locator, "dtype": a.dtype}
    with lock.hold(a.out):  # one run per --out
        checks.own_folder(a.out, record)
        interrupts.saved(a.out, "each model's finished result.json, and the running model's work in its "
                         "result.json.work")
        with interrupts.writing(a.out):
            checks.claim(a.out, record)
        _main(a, models, ratios_for, bench)


def _main(a, models: list[str], ratios_for: dict, bench: Path) -> None:
    dtypes = {}

    def dtype_for(name: str) -> tuple[str, str]:  # auto: per model, its own MLP's shape (METHOD.md §10)
        if name not in dtypes:
            c = read_config(model_folder(name)) if a.dtype == "auto" else None
            dtypes[name] = resolve_dtype(a.dtype, a.device, (c.hidden_size, c.intermediate_size) if c else (0, 0))
        return dtypes[name]

    def settings_for(name: str) -> Settings:
        dtype, why = dtype_for(name)
        return Settings(mode=a.mode, ratios=ratios_for.get(name, a.ratios), skip_layers=a.skip_layers, seed=a.seed,
                        concepts=a.concepts or None, control=not a.no_control, dtype=dtype, dtype_choice=why,
                        device=a.device, batch_size=a.batch_size, matched_control=a.matched_control,
                        pseudo_control=a.pseudo_control, split_half=a.split_half, locator=a.locator)

    results = run_models(models, bench, a.out, settings_for, a.quiet)
    instruct = {label_of(m): (MODELS[m].instruct if m in MODELS else None) for m in models}
    settings = {"bench": str(bench), "mode": a.mode, "dtype": {label_of(m): dtype_for(m)[0] for m in models},
                "concepts": a.concepts or None,
                "skip_layers": a.skip_layers, "seed": a.seed, "control": not a.no_control,
                "matched_control": a.matched_control, "pseudo_control": a.pseudo_control,
                "split_half": a.split_half, "locator": a.locator,
                "ratios": {label_of(m): settings_for(m).ratios for m in models}}
    path = write_report(results, a.out, settings, instruct, a.bootstrap)
    print(path.read_text())
    print(f"report: {path}")
    for png in sorted(Path(a.out).glob("fig*.png")):
        print(f"figure: {png}")
