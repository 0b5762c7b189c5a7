"""Paired tests over concepts and correlation tests over models (METHOD.md §9): a percentile bootstrap
interval, the paired sign-flip permutation test with the smallest effect it detects (`mde80`), and Pearson
and Spearman with a permutation p-value.

Exact where the enumeration is small (2^n sign patterns for n <= 16 concepts, n! orderings for n <= 8
models), else Monte Carlo with a seeded generator and p = (count + 1) / (draws + 1). The paired, two-sample
and correlation tests are two-sided (a test with a direction reads the sign of the difference beside its
p-value); `above_chance_p` alone is one-sided (is an accuracy above guessing?). `holm` adjusts a family of
p-values so that the chance of any false rejection stays at most ALPHA.
"""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np

ALPHA = 0.05
EXACT_SIGNS = 16  # up to this many pairs every sign pattern is enumerated
EXACT_ORDERS = 8  # up to this many points every ordering is enumerated
DRAWS = 100_000  # Monte Carlo draws beyond those sizes
BOOTSTRAP = 10_000  # bootstrap draws over concepts
TOLERANCE = 1e-12  # statistics equal up to rounding count as "at least as extreme"
POWER = 0.8  # the power at which `mde` states the smallest detectable effect


def bootstrap_ci(values, n_boot: int = BOOTSTRAP, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile interval of the mean of `values` under resampling them with replacement (`n_boot`
    draws, seeded): the draws' sorted means at floor(q (n_boot - 1)) and ceil((1 - q) (n_boot - 1)), q =
    (1 - level) / 2. None for no values."""
    x = np.asarray([float(v) for v in values])
    if not len(x):
        return None
    rng = np.random.default_rng(seed)
    means = np.sort(x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1))
    q = (1 - level) / 2
    return [float(means[math.floor(q * (n_boot - 1))]), float(means[math.ceil((1 - q) * (n_boot - 1))])]


def sign_flip_p(differences, draws: int = DRAWS, seed: int = 0) -> float | None:
    """Two-sided p-value of the paired sign-flip permutation test that the mean of `differences` is 0:
    the share of sign patterns whose mean is at least as far from 0 as the observed one. Every pattern
    for up to EXACT_SIGNS pairs (the observed one among them), else `draws` seeded random patterns,
    (count + 1) / (draws + 1). None for no pairs."""
    d = np.asarray([float(v) for v in differences])
    n = len(d)
    if not n:
        return None
    observed = abs(d.mean())
    if n <= EXACT_SIGNS:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float((np.abs((signs * d).mean(1)) >= observed - TOLERANCE).mean())
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, draws, 10_000):
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, draws - start), n))
        count += int((np.abs((signs * d).mean(1)) >= observed - TOLERANCE).sum())
    return (count + 1) / (draws + 1)


def mde(differences, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest mean difference a two-sided paired test at `alpha` detects with probability `power`,
    from the observed spread of the per-pair `differences` (METHOD.md §9):
    (z_{1 - alpha/2} + z_{power}) * sd / sqrt(n), sd with n - 1 in its denominator. The normal
    approximation of the test statistic; the sign-flip test's own power is close to it from about 20 pairs
    on. None for fewer than 2 pairs."""
    d = np.asarray([float(v) for v in differences])
    if len(d) < 2:
        return None
    z = NormalDist().inv_cdf
    return float((z(1 - alpha / 2) + z(power)) * d.std(ddof=1) / math.sqrt(len(d)))


def paired_test(located, control, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """`located - control` per concept (pairs where both are numbers): their mean `difference`, its
    bootstrap 95% interval `ci95`, the sign-flip `p_value` and `mde80`, the smallest difference the test
    detects with 80% power at ALPHA (`mde`)."""
    d = [a - b for a, b in zip(located, control) if a is not None and b is not None]
    return {"difference": sum(d) / len(d) if d else None, "ci95": bootstrap_ci(d, n_boot, seed),
            "p_value": sign_flip_p(d, seed=seed), "mde80": mde(d), "n": len(d)}


# ---- correlations across models ---------------------------------------------------------------------

def pearson(xs, ys) -> float | None:
    """Pearson's r; None with fewer than 3 points or when either side has no variance."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    if len(xs) != len(ys):
        raise ValueError(f"pearson: {len(xs)} x values but {len(ys)} y values")
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def ranks(values) -> list[float]:
    """Ranks from 1, tied values sharing the average of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs, ys) -> float | None:
    """Spearman's rho: Pearson's r of the ranks (average ranks for ties)."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    if len(xs) != len(ys):
        raise ValueError(f"spearman: {len(xs)} x values but {len(ys)} y values")
    return pearson(ranks(xs), ranks(ys))


def correlation_p(xs, ys, method=pearson, draws: int = DRAWS, seed: int = 0) -> float | None:
    """Two-sided permutation p-value of a correlation (`pearson` or `spearman`): the share of orderings
    of `ys` against `xs` whose |r| is at least the observed one; every ordering for up to EXACT_ORDERS
    points, else `draws` seeded random ones, (count + 1) / (draws + 1). None where r is."""
    observed = method(xs, ys)
    if observed is None:
        return None
    ys = list(ys)
    if len(ys) <= EXACT_ORDERS:
        rs = [method(xs, p) for p in itertools.permutations(ys)]
        return sum(r is not None and abs(r) >= abs(observed) - TOLERANCE for r in rs) / len(rs)
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(draws):
        r = method(xs, [ys[k] for k in rng.permutation(len(ys))])
        count += r is not None and abs(r) >= abs(observed) - TOLERANCE
    return (count + 1) / (draws + 1)


def smallest_p(xs, ys, method=pearson) -> float | None:
    """The smallest p-value `correlation_p` can give for these values with this statistic: the share of
    orderings of `ys` that reach the largest |r| any ordering reaches (2 / n! for distinct values; ties
    raise it). Exact up to EXACT_ORDERS points; beyond, 1 / (DRAWS + 1), the Monte Carlo floor. None where
    r is."""
    if method(xs, ys) is None:
        return None
    ys = list(ys)
    if len(ys) > EXACT_ORDERS:
        return 1 / (DRAWS + 1)
    rs = [abs(r) for r in (method(xs, p) for p in itertools.permutations(ys)) if r is not None]
    top = max(rs)
    return sum(r >= top - TOLERANCE for r in rs) / math.factorial(len(ys))


# ---- two groups of different concepts, and accuracy against chance ------------------------------------


def two_sample_test(a, b, n_boot: int = BOOTSTRAP, draws: int = DRAWS, seed: int = 0) -> dict:
    """`mean(a) - mean(b)` for two groups of different units (e.g. the concepts of two tiers): the
    `difference`, its percentile bootstrap 95% interval (each group resampled on its own) and the
    two-sided permutation p-value of exchanging units between the groups (seeded draws,
    (count + 1) / (draws + 1))."""
    x = np.asarray([float(v) for v in a if v is not None])
    y = np.asarray([float(v) for v in b if v is not None])
    if not len(x) or not len(y):
        return {"difference": None, "ci95": None, "p_value": None, "n": [len(x), len(y)]}
    rng = np.random.default_rng(seed)
    boot = np.sort(x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1) - y[rng.integers(0, len(y), (n_boot, len(y)))].mean(1))
    q = 0.025
    observed = x.mean() - y.mean()
    pooled, count = np.concatenate([x, y]), 0
    for start in range(0, draws, 10_000):
        perm = rng.permuted(np.broadcast_to(pooled, (min(10_000, draws - start), len(pooled))), axis=1)
        diff = perm[:, :len(x)].mean(1) - perm[:, len(x):].mean(1)
        count += int((np.abs(diff) >= abs(observed) - TOLERANCE).sum())
    return {"difference": float(observed),
            "ci95": [float(boot[math.floor(q * (n_boot - 1))]), float(boot[math.ceil((1 - q) * (n_boot - 1))])],
            "p_value": (count + 1) / (draws + 1), "n": [len(x), len(y)]}


def above_chance_p(correct: int, n: int, chance: float = 0.25) -> float:
    """One-sided exact binomial p-value of `correct` or more right out of `n` when each answer is right
    with probability `chance` (is an accuracy above guessing?)."""
    if n == 0:
        return 1.0
    log = lambda k: (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                     + k * math.log(chance) + (n - k) * math.log1p(-chance))
    return float(min(1.0, sum(math.exp(log(k)) for k in range(correct, n + 1))))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the i-th smallest p times (m - i + 1),
    made non-decreasing along the sorted order and capped at 1. Rejecting where the adjusted p < ALPHA keeps
    the chance of any false rejection among the m tests at most ALPHA."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
