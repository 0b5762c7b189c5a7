"""The instrument measured where the truth is known: how often the real-model protocol detects concept
specificity in models that have it (power), and how often it "detects" it where there is none (false
positives). Reads saved PSS results (`study.py` makes them); runs no model.

One draw is one real-model study: a model picked at random from a condition's models and 90 concepts of
10 questions from its scored concepts, a third per tier, drawn with replacement; on it, the paired sign-flip
test over concepts of located minus each control (uniform `random`, `matched`, `pseudo`) at every ratio, on
the excess drop of accuracy and of p(correct), exactly as a real-model result runs it (`run.report`),
and the result's one decision (`run.claims.verdict`: every control beaten at a ratio above the floor, Holm
across ratios). A draw detects where p < ALPHA and the difference is positive. The conditions:

- `trained`: the base size's final models, where the study's premise holds (power);
- `untrained`: the same models' random initialisation (nothing is stored: a null);
- `swapped`: the trained models scored on chimeras of two same-kind, same-tier concepts, each half of
  one, so every question is scored under the mask located on the other concept (a null: the mask is a
  real concept's, not this one's).

The per-draw p-values and differences are saved, so every rate recomputes from them (`rates`). A draw
resamples one model's scored concepts, so every draw of that model shares the sample's own chance mean:
with a pool as large as the design (90 of 90) a null whose true effect is 0 is detected in one direction
about 8% of the time, not ALPHA / 2 (the mean's variance doubles: P(Z > 1.96 / sqrt 2)). Each null model's
whole-sample test (`null_pools`) is given beside the rates.
"""

from __future__ import annotations

import numpy as np

from ..method.benchmark import TIERS
from ..run.claims import floored, verdict
from ..run.report import ROWS
from ..run.stats import ALPHA, rate_ci, sign_flip_p, sign_flip_ps

CONTROLS = ("random", "matched", "pseudo")
MEASURES = ("excess_drop", "prob_excess_drop")
DESIGN_CONCEPTS = 90  # the real-model study's concepts (10 questions each)
POWER_CONCEPTS = (30, 90, 180, 525)  # power against the number of concepts (525: the paper's benchmark)
EFFECT_SHARES = (0.25, 0.5)  # power at these shares of the trained models' effect (`shrunk`), 90 concepts
NULLS = ("untrained", "swapped")
SIGN_FLIPS = 10_000  # per test in a draw: p resolves to 1e-4, far finer than ALPHA needs


def concept_table(result: dict) -> dict:
    """From one PSS result: per concept its tier, and per ratio, control and measure the difference
    located minus control; per ratio the located General_after (for the floor)."""
    rows = result["concepts"]
    ratios = [r for r in rows[0]["by_ratio"] if float(r) > 0]
    diff = {r: {c: {m: np.array([row["by_ratio"][r][m] - row[ROWS[c]][r][m] for row in rows])
                    for m in MEASURES if m in rows[0]["by_ratio"][r]}
                for c in CONTROLS if ROWS[c] in rows[0]} for r in ratios}
    general = {r: np.array([row["by_ratio"][r]["general_after"] for row in rows]) for r in ratios}
    return {"tiers": np.array([row["tier"] for row in rows]), "difference": diff, "general_after": general}


def one_draw(tables: list[dict], n: int, rng, sign_flips: int = SIGN_FLIPS) -> dict:
    """One study of `n` concepts (n / 3 per tier, with replacement) from a model drawn from `tables`:
    per ratio, control and measure the mean difference and the sign-flip p; the study's verdict."""
    t = tables[rng.integers(len(tables))]
    pick = np.concatenate([rng.choice(np.flatnonzero(t["tiers"] == tier), n // len(TIERS)) for tier in TIERS])
    seed = int(rng.integers(2 ** 31))
    keys = [(r, c, m) for r, by in t["difference"].items() for c, ms in by.items() for m in ms]
    columns = np.stack([t["difference"][r][c][m][pick] for r, c, m in keys], 1)
    ps = sign_flip_ps(columns, sign_flips, seed)  # every test of the draw on the same sign patterns
    tests: dict = {}
    for (r, c, m), x, p in zip(keys, columns.T, ps):
        tests.setdefault(r, {}).setdefault(c, {})[m] = {"difference": float(x.mean()), "p_value": p, "mde80": None}
    floors = {r: floored(float(g[pick].mean())) for r, g in t["general_after"].items()}
    graded = all("prob_excess_drop" in ms for by in t["difference"].values() for ms in by.values())
    return {"tests": tests, "verdict": verdict(tests, floors, graded)["detected"]}


def shrunk(tables: list[dict], share: float) -> list[dict]:
    """The trained models with every concept's difference moved toward 0 by (1 - share) of its model's mean
    difference: the same spread around an effect `share` times as large (power at a smaller effect)."""
    return [{**t, "difference": {r: {c: {m: d - (1 - share) * d.mean() for m, d in ms.items()} for c, ms in by.items()}
                                 for r, by in t["difference"].items()}} for t in tables]


def draws_of(tables: list[dict], n: int, draws: int, seed: int, sign_flips: int = SIGN_FLIPS) -> dict:
    """`draws` studies of `n` concepts: per ratio, control and measure the lists of p-values and mean
    differences (one per draw), and the list of verdicts (True, False, or None where every ratio was
    floored)."""
    rng = np.random.default_rng(seed)
    out: dict = {"p_value": {}, "difference": {}, "verdict": []}
    for _ in range(draws):
        d = one_draw(tables, n, rng, sign_flips)
        for r, by in d["tests"].items():
            for c, measures in by.items():
                for m, test in measures.items():
                    out["p_value"].setdefault(r, {}).setdefault(c, {}).setdefault(m, []).append(test["p_value"])
                    out["difference"].setdefault(r, {}).setdefault(c, {}).setdefault(m, []).append(test["difference"])
        out["verdict"].append(d["verdict"])
    return out


def detections(p_values: list[float], differences: list[float]) -> int:
    """How many draws detect: p < ALPHA with a positive difference (the claim's direction)."""
    return sum(p < ALPHA and d > 0 for p, d in zip(p_values, differences))


def rates(saved: dict, r: str, c: str, m: str) -> dict:
    """The detection rate of one test over saved draws (`draws_of`), with its Wilson 95% interval."""
    p, d = saved["p_value"][r][c][m], saved["difference"][r][c][m]
    hits = detections(p, d)
    return {"rate": hits / len(p), "ci95": rate_ci(hits, len(p)), "draws": len(p)}


def calibrate(conditions: dict[str, list[dict]], draws: int = 50, seed: int = 0, sign_flips: int = SIGN_FLIPS) -> dict:
    """The `calibration` section of study.json from the PSS results of each condition (`trained`, and the
    nulls in NULLS; each a list of results, one per model): per ratio, control and measure, `power` and
    `power_ci95` (trained), `false_positive_rate` and `false_positive_ci95` (the null with the higher
    rate, named in `false_positive_null`; each null's own under `false_positive_by_null`), `effect` (the
    mean difference over every concept of every trained model), `draws`, `power_by_concepts` (power at
    30, 90, 180 and 525 concepts) and `power_by_effect` (at 90 concepts, an effect a quarter and half as
    large, `shrunk`); the same for the verdict under `decision`; the per-draw p-values and
    differences under `per_draw` (condition -> `draws_of`), from which every rate recomputes."""
    tables = {name: [concept_table(r) for r in results] for name, results in conditions.items() if results}
    per_draw = {name: draws_of(t, DESIGN_CONCEPTS, draws, seed + k, sign_flips) for k, (name, t) in enumerate(tables.items())}
    by_size = {n: draws_of(tables["trained"], n, draws, seed + 100 + n, sign_flips) for n in POWER_CONCEPTS}
    by_share = {f: draws_of(shrunk(tables["trained"], f), DESIGN_CONCEPTS, draws, seed + 1000 + round(100 * f),
                            sign_flips) for f in EFFECT_SHARES}
    by_ratio: dict = {}
    trained = per_draw["trained"]
    for r, by in trained["p_value"].items():
        for c, measures in by.items():
            for m in measures:
                power = rates(trained, r, c, m)
                nulls = {name: rates(per_draw[name], r, c, m) for name in NULLS if name in per_draw}
                worst = max(nulls, key=lambda name: nulls[name]["rate"]) if nulls else None
                by_ratio.setdefault(r, {}).setdefault(c, {})[m] = {
                    "power": power["rate"], "power_ci95": power["ci95"],
                    "false_positive_rate": nulls[worst]["rate"] if worst else None,
                    "false_positive_ci95": nulls[worst]["ci95"] if worst else None, "false_positive_null": worst,
                    "false_positive_by_null": nulls,
                    "effect": float(np.mean(np.concatenate([t["difference"][r][c][m] for t in tables["trained"]]))),
                    "draws": power["draws"],
                    "null_pools": [{"null": name, **pool_test(t, r, c, m, sign_flips)} for name in NULLS
                                   for t in tables.get(name, [])],
                    "power_by_concepts": {str(n): rates(by_size[n], r, c, m)["rate"] for n in POWER_CONCEPTS},
                    "power_by_effect": {str(f): rates(by_share[f], r, c, m)["rate"] for f in EFFECT_SHARES}}
    decision = {name: verdict_rate(d["verdict"]) for name, d in per_draw.items()}
    decision["power_by_concepts"] = {str(n): verdict_rate(d["verdict"])["rate"] for n, d in by_size.items()}
    decision["power_by_effect"] = {str(f): verdict_rate(d["verdict"])["rate"] for f, d in by_share.items()}
    return {"design": {"concepts": DESIGN_CONCEPTS, "per_tier": DESIGN_CONCEPTS // len(TIERS),
                       "questions_per_concept": "as the benchmark (10 in the synthetic world)", "draws": draws,
                       "alpha": ALPHA, "sign_flips": sign_flips, "seed": seed,
                       "models": {name: len(t) for name, t in tables.items()},
                       "detected": "p < alpha and located minus control > 0"},
            "by_ratio": by_ratio, "decision": decision,
            "per_draw": {**per_draw, **{f"trained_{n}_concepts": d for n, d in by_size.items()},
                         **{f"trained_effect_x{f}": d for f, d in by_share.items()}}}


def pool_test(table: dict, r: str, c: str, m: str, sign_flips: int = SIGN_FLIPS) -> dict:
    """The test a single study of one model's whole scored sample gives (the draws replicate its mean)."""
    d = table["difference"][r][c][m]
    return {"difference": float(d.mean()), "p_value": sign_flip_p(d, sign_flips, 0), "concepts": len(d)}


def verdict_rate(verdicts: list) -> dict:
    """How often the result's decision detected, over draws (an undecided draw does not detect), and how
    often every ratio was floored."""
    hits = sum(v is True for v in verdicts)
    return {"rate": hits / len(verdicts), "ci95": rate_ci(hits, len(verdicts)), "draws": len(verdicts),
            "undecided": sum(v is None for v in verdicts)}
