"""The controls, split-half and the zscore locator (METHOD.md §4): what lets a result tell "concept-specific"
apart from "large" and from selection on noise. Each kind of mask is an order of a layer's value vectors whose
first k are masked (`pss.mask_for`): `located` ranks Eq. 5's scores (`pss.locate`), `random` is a seeded random
order, `matched` draws units of the located ones' magnitudes; the `pseudo` control locates a pseudo-concept
made of other concepts' questions (`pseudo_concepts`) by the code that locates a concept. `cell_masks` builds
every mask a concept's cells score, located on all of its questions or, with split-half, on one half and
scoring the other.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

import torch

from .benchmark import MCQ, Concept
from .pss import concept_means, locate, mask_for, ranking, top_k, unrelated_mean

KINDS = ("located", "random", "matched")  # the located vectors, as many random ones, or as many magnitude-matched ones
LOCATORS = ("diff", "zscore")  # Eq. 5, or Eq. 5 over a pooled standard deviation (METHOD.md §4)
ZSCORE_EPS = 1e-6  # added to the pooled standard deviation: a unit never active scores 0, not 0/0
BIN_UNITS = 8  # units per magnitude bin of the matched control (METHOD.md §4)
AHEAD = 2  # the matched control's t-th choice avoids the located units up to place AHEAD * t (METHOD.md §4)


def random_ranking(shape, seed: int) -> torch.Tensor:
    """The random-vector control: a seeded random order per layer (so the sets nest across ratios)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(shape[1], generator=g) for _ in range(shape[0])])


def pseudo_concepts(concepts: list[Concept], others: list[list[int]], seed: int) -> list[list[tuple[int, int]]]:
    """The pseudo-concept control (METHOD.md §4): per concept i, as many questions `(concept, index)` as i has,
    each from a different concept that is neither i nor one of its unrelated concepts `others[i]`, one
    question of each drawn at random (seeded by `seed` and i). Located, masked and scored exactly as a
    concept, against i's unrelated concepts."""
    out = []
    for i, c in enumerate(concepts):
        pool = [j for j in range(len(concepts)) if j != i and j not in others[i]]
        if len(pool) < len(c.mcq):
            raise ValueError(f"concept {c.name!r} has {len(c.mcq)} questions but only {len(pool)} concepts lie outside "
                             f"it and its unrelated set: the pseudo-concept control needs at least "
                             f"{len(c.mcq) + 1 + len(others[i])} concepts")
        rng = random.Random(seed * 1_000_003 + i)
        out.append([(j, rng.randrange(len(concepts[j].mcq))) for j in rng.sample(pool, len(c.mcq))])
    return out


def halves_of(questions: list[MCQ], by_fact: bool = True) -> list[int]:
    """Split-half (METHOD.md §4): the half (0 or 1) of each of a concept's questions. Questions naming one
    fact (`MCQ.fact`, e.g. two phrasings of it) share a half, so no answer is both located and scored; the
    facts alternate, in the order they first appear (the f-th fact is in half f % 2). A question naming no
    fact, or every question with `by_fact=False`, is a fact of its own: then question k is in half k % 2."""
    order: dict = {}
    return [order.setdefault(q.fact if by_fact and q.fact is not None else ("question", k), len(order)) % 2
            for k, q in enumerate(questions)]


def index_halves(n: int) -> list[int]:
    """The halves of n questions that name no fact: question k in half k % 2 (`halves_of`)."""
    return [k % 2 for k in range(n)]


def split_half(halves: list[list[int]], i: int, others: list[int]) -> list[dict[str, list[tuple[int, int]]]]:
    """Per half h: the questions `(concept, index)` that locate concept i's mask (its own and its unrelated
    concepts' questions of half h, `halves[j][k]` the half of concept j's question k) and those that mask
    scores (the rest of them: the other half)."""
    keys = [(j, k) for j in [i] + others for k in range(len(halves[j]))]  # `questions_of`'s order
    return [{"locate": [q for q in keys if halves[q[0]][q[1]] == h], "score": [q for q in keys if halves[q[0]][q[1]] != h]}
            for h in (0, 1)]


def question_groups(halves: list[int], split: bool) -> list[list[int]]:
    """The groups of a concept's questions (`halves`, one per question) whose coefficient means are kept:
    all of them, and with split-half each half."""
    n = len(halves)
    return [list(range(n))] + ([[k for k in range(n) if halves[k] == h] for h in (0, 1)] if split else [])


@dataclass
class ConceptStats:
    """What locating reads per concept and group of its questions (`question_groups`): the mean of the
    per-question |m| `means` `[C, G, L, d_ff]`, with the zscore locator the mean of their squares
    `squares` (same shape), the group sizes `counts` `[C][G]`, and each question's half `halves` `[C][n]`
    (`halves_of`; None: by index, `index_halves`)."""
    means: torch.Tensor
    counts: list[list[int]]
    squares: torch.Tensor | None = None
    halves: list[list[int]] | None = None

    def halves_of_all(self) -> list[list[int]]:
        return self.halves if self.halves is not None else [index_halves(c[0]) for c in self.counts]

    @classmethod
    def whole(cls, means: torch.Tensor, counts: list[int]) -> "ConceptStats":
        """From m per concept `[C, L, d_ff]` (`pss.collect_coefficients`): one group, all the questions."""
        return cls(means[:, None], [[n] for n in counts])

    def unrelated(self, values: torch.Tensor, group: int, others: list[int]) -> torch.Tensor:
        """m* (`pss.unrelated_mean`) of `values` over the questions of `group`."""
        return unrelated_mean(values[:, group], [c[group] for c in self.counts], others)


def group_stats(per_question: torch.Tensor, halves: list[list[int]], split: bool, squares: bool = False) -> torch.Tensor:
    """`[C, G, L, d_ff]`: per concept (its questions consecutive in `per_question`, one per entry of its
    `halves`) and group of its questions (`question_groups`), m (`pss.concept_means`) of those questions, or
    the mean of their squares."""
    rows = per_question.square() if squares else per_question
    starts = [0, *itertools.accumulate(map(len, halves))][:-1]
    groups = [question_groups(h, split) for h in halves]
    return torch.stack([concept_means(rows[[s + k for s, g in zip(starts, groups) for k in g[h]]],
                                      [len(g[h]) for g in groups]) for h in range(len(groups[0]))], 1)


def unit_scores(i: int, stats: ConceptStats, group: int, others: list[int], locator: str = "diff") -> torch.Tensor:
    """The locator's score of every value vector of concept i from the questions of `group`, `[L, d_ff]`.
    `diff`: Eq. 5, |m - m*|. `zscore`: |m - m*| over the pooled within-group standard deviation of the
    per-question coefficients of the concept's and its unrelated questions (METHOD.md §4)."""
    m, m_star = stats.means[i, group], stats.unrelated(stats.means, group, others)
    score = locate(m, m_star)
    if locator == "diff":
        return score
    if locator != "zscore":
        raise ValueError(f"unknown locator {locator!r}; choose one of {', '.join(LOCATORS)}")
    if stats.squares is None:
        raise ValueError("the zscore locator needs the means of squared coefficients")
    n, n_star = stats.counts[i][group], sum(stats.counts[j][group] for j in others)
    sq, sq_star = stats.squares[i, group].double(), stats.unrelated(stats.squares, group, others).double()
    within = n * (sq - m.double() ** 2) + n_star * (sq_star - m_star.double() ** 2)  # sums of squared deviations
    sd = (within.clamp(min=0) / max(n + n_star - 2, 1)).sqrt()
    return (score.double() / (sd + ZSCORE_EPS)).float()


def magnitude_bins(magnitude: torch.Tensor) -> torch.Tensor:
    """Per unit of one layer, its bin among round(d_ff / BIN_UNITS) equal-count bins by rank of magnitude
    (ties by index), 0 the smallest."""
    d = magnitude.shape[0]
    n_bins = max(1, round(d / BIN_UNITS))
    rank = torch.empty(d, dtype=torch.long)
    rank[torch.sort(magnitude, stable=True).indices] = torch.arange(d)
    return rank * n_bins // d


def matched_ranking(located: torch.Tensor, magnitude: torch.Tensor, k: int, skip: int, seed: int) -> torch.Tensor:
    """The magnitude-matched control (METHOD.md §4): per layer l >= skip, an order whose first k units
    match the located order's first k in magnitude. In located order, each located unit u at place t
    (from 0) takes the next unit, in a seeded random order, of u's magnitude bin (`magnitude_bins`) that
    is neither taken already nor among the located units at places below AHEAD * (t + 1); when that bin
    has none left, the nearest bin that has (the lower on a tie); when none has, any unit not taken. The
    t-th choice depends only on the located order, not on k, so the sets nest across ratios whatever k is.
    Places from k on (and layers below skip) hold the remaining units by index."""
    L, d = located.shape
    out = torch.arange(d).repeat(L, 1)
    g = torch.Generator().manual_seed(seed)
    for layer in range(skip, L):
        bins = magnitude_bins(magnitude[layer])
        perm = torch.randperm(d, generator=g)
        shuffled = perm[torch.sort(bins[perm], stable=True).indices].tolist()  # by bin, random within
        sizes = torch.bincount(bins, minlength=int(bins.max()) + 1).tolist()
        starts = [0, *itertools.accumulate(sizes)][:-1]
        pointer, live = list(starts), [b for b in range(len(sizes)) if sizes[b]]
        place = torch.empty(d, dtype=torch.long)
        place[located[layer]] = torch.arange(d)
        place, bins, taken, chosen, spare = place.tolist(), bins.tolist(), [False] * d, [], 0
        for t, u in enumerate(located[layer, :k].tolist()):
            pick = None
            while pick is None and live:
                j = bisect.bisect_left(live, bins[u])
                near = [live[x] for x in (j - 1, j) if 0 <= x < len(live)]
                b = min(near, key=lambda c: (abs(c - bins[u]), c))
                p, end = pointer[b], starts[b] + sizes[b]
                while p < end and place[shuffled[p]] < AHEAD * (t + 1):  # excluded now, so for good
                    p += 1
                if p < end:
                    pick, p = shuffled[p], p + 1
                pointer[b] = p
                if p == end:
                    live.remove(b)
            if pick is None:  # more than half of the layer masked: every unit is taken or located
                while taken[spare]:
                    spare += 1
                pick = spare
            taken[pick] = True
            chosen.append(pick)
        out[layer] = torch.tensor(chosen + [v for v in range(d) if not taken[v]])
    return out


def concept_orders(i: int, kinds, k_max: int, stats: ConceptStats, group: int, others: list[int], skip: int,
                   seed: int, locator: str = "diff") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Concept i's order per kind (`[L, d_ff]`, the first k of each layer are masked at k), located from
    the questions of `group`, and the magnitudes a = m* the matched control matches (the mean |m| over the
    unrelated questions of that group). `random` is seeded by `seed` and i only (it locates nothing)."""
    scores = unit_scores(i, stats, group, others, locator)
    orders = {"located": ranking(scores)}
    magnitude = stats.unrelated(stats.means, group, others)
    if "random" in kinds:
        orders["random"] = random_ranking(scores.shape, seed * 1_000_003 + i)
    if "matched" in kinds:
        orders["matched"] = matched_ranking(orders["located"], magnitude, k_max, skip,
                                            (seed * 1_000_003 + i) * 3 + 1 + group)
    return orders, magnitude


def cell_masks(i: int, cells: list[tuple[str, float]], stats: ConceptStats, others: list[int], skip: int, seed: int,
               locator: str = "diff", split: bool = False, signed: torch.Tensor | None = None):
    """The masks of concept i's cells `(kind, ratio)` and the questions each scores: `(masks [N, L, d_ff],
    parts)` with, per cell, a list of `(row of masks, positions in questions_of's order)`. One mask per cell
    located from all questions, or with `split` one per half, located on that half and scoring the other
    (`split_half`). `signed`, the signed coefficient means `[C, L, d_ff]`, makes them mean-ablation masks
    (`[N, L, 2 * d_ff]`)."""
    counts = [c[0] for c in stats.counts]
    keys = [(j, k) for j in [i] + others for k in range(counts[j])]
    position = {key: p for p, key in enumerate(keys)}
    halves = [(g + 1, [position[q] for q in part["score"]])
              for g, part in enumerate(split_half(stats.halves_of_all(), i, others))]
    groups = halves if split else [(0, list(range(len(keys))))]
    d_ff = stats.means.shape[-1]
    k_max = max([top_k(d_ff, r) for kind, r in cells if kind == "matched"], default=0)
    fill = None if signed is None else unrelated_mean(signed, counts, others)
    masks, parts = [], [[] for _ in cells]
    for group, scored in groups:
        orders, _ = concept_orders(i, {kind for kind, _ in cells}, k_max, stats, group, others, skip, seed, locator)
        for n, (kind, r) in enumerate(cells):
            parts[n].append((len(masks), scored))
            masks.append(mask_for(orders[kind], r, skip, fill))
    return torch.stack(masks), parts


def set_magnitudes(i: int, ratios: list[float], stats: ConceptStats, others: list[int], skip: int, seed: int,
                   locator: str = "diff", split: bool = False) -> dict[float, dict[str, float | None]]:
    """Per ratio: for each kind, the mean magnitude a (`concept_orders`) of the units concept i's mask sets
    to 0 over the layers >= skip (and the two halves with `split`), under `(kind, "median")` their median
    (a few outsized units move the mean, not the median), and under "shared" the share of the matched
    units that are also located; None where nothing is masked."""
    d_ff = stats.means.shape[-1]
    k_max = max(top_k(d_ff, r) for r in ratios)
    parts = {}
    for group in ((1, 2) if split else (0,)):
        orders, magnitude = concept_orders(i, KINDS, k_max, stats, group, others, skip, seed, locator)
        for r in ratios:
            k = top_k(d_ff, r)
            if not k:
                continue
            for kind, order in orders.items():
                values = magnitude[skip:].gather(1, order[skip:, :k])
                parts.setdefault((r, kind), []).append(values.mean().item())
                parts.setdefault((r, (kind, "median")), []).append(values.median().item())
            located = torch.zeros_like(magnitude[skip:], dtype=torch.bool)
            located.scatter_(1, orders["located"][skip:, :k], True)
            parts.setdefault((r, "shared"), []).append(located.gather(1, orders["matched"][skip:, :k]).float().mean().item())
    names = [*KINDS, *((kind, "median") for kind in KINDS), "shared"]
    return {r: {name: (sum(parts[r, name]) / len(parts[r, name]) if (r, name) in parts else None) for name in names}
            for r in ratios}
