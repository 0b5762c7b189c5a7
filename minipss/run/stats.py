"""Paired tests over concepts and correlation tests over models (METHOD.md §9): a percentile bootstrap
interval, the paired sign-flip permutation test with the smallest effect it detects (`mde80`), and Pearson
and Spearman with a permutation p-value.

Exact where the enumeration is small (2^n sign patterns for n <= 16 concepts, n! orderings for n <= 8
models), else Monte Carlo with a seeded generator and p = (count + 1) / (draws + 1). The paired, two-sample
and correlation tests are two-sided (a test with a direction reads the sign of the difference beside its
p-value). `holm` adjusts a family of p-values so that the chance of any false rejection stays at most ALPHA.
For few units (pretraining seeds), Student's t in closed form (`t_test`); for a rate over draws, Wilson's
interval (`rate_ci`).
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


def sign_flip_ps(columns, draws: int = DRAWS, seed: int = 0) -> list[float]:
    """`sign_flip_p` of each column of `columns` (`[n pairs, k tests]`), all tests sharing the sign
    patterns: equal, column by column, to `sign_flip_p(column, draws, seed)`, at the cost of one."""
    x = np.asarray(columns, dtype=float)
    n, k = x.shape
    if n <= EXACT_SIGNS or not n:
        return [sign_flip_p(x[:, j], draws, seed) for j in range(k)]
    observed = np.abs(x.mean(0))
    rng = np.random.default_rng(seed)
    count = np.zeros(k, dtype=np.int64)
    for start in range(0, draws, 10_000):
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, draws - start), n))
        count += (np.abs(signs @ x / n) >= observed - TOLERANCE).sum(0)
    return [float((c + 1) / (draws + 1)) for c in count]


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


# ---- two groups of different concepts ------------------------------------------------------------------


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


# ---- few units (pretraining seeds): Student's t, and a detection rate -------------------------------


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with integer `df` degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-4: P(|T| < t) as a finite series in theta = atan(|t| / sqrt(df)))."""
    if df < 1:
        raise ValueError(f"t test: {df} degrees of freedom")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2 / pi) (theta + sin cos (1 + 2/3 cos^2 + 2.4/3.5 cos^4 + ...)), df - 3 terms of two
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    else:  # even: sin (1 + 1/2 cos^2 + 1.3/2.4 cos^4 + ...)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return float(min(1.0, max(0.0, 1.0 - inside)))


def t_quantile(df: int, p: float = 0.975) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on `t_two_sided_p`)."""
    lo, hi, target = 0.0, 1e3, 2 * (1 - p)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > target else (lo, mid)
    return (lo + hi) / 2


def t_test(a, b, paired: bool) -> dict:
    """Student's t test of mean(a) - mean(b) for few units, e.g. pretraining seeds (each seed one number):
    `paired` (a[i] and b[i] from one seed: the differences' mean over their standard error, n - 1 degrees of
    freedom; pairs where both are numbers) or two groups of different units (pooled variance, n_a + n_b - 2;
    the numbers of each). The `difference`, its 95% t-interval `ci95`, the two-sided `p_value`, `t`, `df`
    and `n`; None where too few units or no spread."""
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired t test: {len(a)} values against {len(b)}")
        d = [float(x) - float(y) for x, y in zip(a, b) if x is not None and y is not None]  # pairs with both
        n, diff, df = len(d), (sum(d) / len(d) if d else None), len(d) - 1
        se = math.sqrt(sum((x - diff) ** 2 for x in d) / (n - 1) / n) if n > 1 else None
        size = n
    else:
        a, b = [float(x) for x in a if x is not None], [float(x) for x in b if x is not None]
        n_a, n_b = len(a), len(b)
        diff = sum(a) / n_a - sum(b) / n_b if n_a and n_b else None
        df = n_a + n_b - 2
        if n_a and n_b and df > 0:
            ma, mb = sum(a) / n_a, sum(b) / n_b
            pooled = (sum((x - ma) ** 2 for x in a) + sum((x - mb) ** 2 for x in b)) / df
            se = math.sqrt(pooled * (1 / n_a + 1 / n_b))
        else:
            se = None
        size = [n_a, n_b]
    if diff is None or se is None or df < 1 or se == 0:
        return {"difference": diff, "ci95": None, "p_value": None, "t": None, "df": df, "n": size}
    t, half = diff / se, t_quantile(df) * se
    return {"difference": diff, "ci95": [diff - half, diff + half], "p_value": t_two_sided_p(t, df), "t": t,
            "df": df, "n": size}


def rate_ci(hits: int, n: int, z: float = 1.959964) -> list[float] | None:
    """Wilson's 95% score interval of a rate of `hits` out of `n` (a detection rate over draws); it
    reaches 0 and 1 exactly at 0 and n hits."""
    if n == 0:
        return None
    p = hits / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [0.0 if hits == 0 else max(0.0, centre - half), 1.0 if hits == n else min(1.0, centre + half)]
