"""The paper's method up to the masks: collect coefficients (§3.2), locate value vectors (Eq. 5), build
masks (Eq. 4, §4.1), and choose the value vectors §5 fine-tunes. Scores (Eq. 6) are in `scores`.

Section and equation numbers refer to the paper; decisions where it is silent are in
METHOD.md (§3-§7) and are switchable arguments here.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

import torch

from ..model.decoder import Coefficients
from ..model.padding import left_pad
from .benchmark import Concept, unrelated_sets
from .prompts import coefficient_prompt

TOKEN_RULES = ("content", "all", "last")


@torch.inference_mode()
def question_coefficients(model, tok, texts: list[str], token_rule: str = "content",
                          batch_size: int = 32, absolute: bool = True, progress=None) -> torch.Tensor:
    """Mean |m| (m itself when not `absolute`) over each text's tokens, per layer: `[N, L, d_ff]` in
    fp32 (§3.2, Appendix B.1). `progress(n)`, if given, hears of every n texts done.

    token_rule: `content` leaves out special tokens such as BOS (default), `all` keeps them, `last` uses
    the last token only."""
    out = []
    encoded = [tok.encode(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths together: less padding
    for start in range(0, len(texts), batch_size):
        ids, attn, pos = left_pad([encoded[i] for i in order[start:start + batch_size]], tok.pad_id, model.device)
        coefficients = Coefficients(pool=token_weights(ids, attn, tok.special_ids, token_rule), absolute=absolute)
        model.run_blocks(model.embed(ids, pos), attention_mask=attn, position_ids=pos, coefficients=coefficients)
        out.append(torch.stack(coefficients, 1).cpu())
        if progress is not None:
            progress(ids.shape[0])
    return torch.cat(out)[torch.argsort(torch.tensor(order))]  # back to the order of `texts`


def token_weights(ids: torch.Tensor, attention: torch.Tensor, special_ids, token_rule: str) -> torch.Tensor:
    """`[B, T]` 0/1 weights of the tokens a question's coefficient mean covers (METHOD.md §3): `content`
    every real token but special ones such as BOS, `all` every real token, `last` the last one."""
    if token_rule not in TOKEN_RULES:
        raise ValueError(f"unknown token rule {token_rule!r}; choose one of {', '.join(TOKEN_RULES)}")
    if token_rule == "content":
        return attention * ~torch.isin(ids, torch.tensor(sorted(special_ids), device=ids.device))
    if token_rule == "last":
        weights = torch.zeros_like(attention)
        weights[:, -1] = 1
        return weights
    return attention.clone()


def collect_coefficients(model, tok, concepts: list[Concept], token_rule: str = "content",
                         batch_size: int = 32, absolute: bool = True, progress=None) -> torch.Tensor:
    """Per concept, the mean over its questions of the per-question coefficients: `[C, L, d_ff]`.
    Each question is read as `Question: {q} Answer: {correct option}` (§3.2)."""
    texts = [coefficient_prompt(q) for c in concepts for q in c.mcq]
    return concept_means(question_coefficients(model, tok, texts, token_rule, batch_size, absolute, progress),
                         concepts)


def concept_means(per_question: torch.Tensor, concepts: list[Concept]) -> torch.Tensor:
    """`[C, L, d_ff]`: per concept, the mean of its questions' rows of `per_question` (in concept order)."""
    out, start = [], 0
    for c in concepts:
        out.append(per_question[start:start + len(c.mcq)].mean(0))
        start += len(c.mcq)
    return torch.stack(out)


def unrelated_mean(coefficients: torch.Tensor, counts: list[int], others: list[int]) -> torch.Tensor:
    """m*: the mean over the unrelated questions, i.e. the question-weighted mean of those concepts."""
    w = torch.tensor([counts[j] for j in others], dtype=coefficients.dtype)
    return (coefficients[others] * w[:, None, None]).sum(0) / w.sum()


def locate(m_concept: torch.Tensor, m_unrelated: torch.Tensor) -> torch.Tensor:
    """Eq. 5: the specificity score S^l_j = |m^l_j - m*^l_j| of every value vector, `[L, d_ff]`."""
    return (m_concept - m_unrelated).abs()


def top_k(d_ff: int, ratio: float) -> int:
    """round(r * d_ff) vectors per layer (half up, so 0.5 rounds to 1)."""
    return int(math.floor(ratio * d_ff + 0.5))


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Per layer, value-vector indices from highest score down; ties go to the lower index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def random_ranking(shape, seed: int) -> torch.Tensor:
    """The random-vector control: a seeded random order per layer (so the sets nest across ratios)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(shape[1], generator=g) for _ in range(shape[0])])


def mask_for(order: torch.Tensor, ratio: float, skip: int, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-masking (§4.1, Eq. 4): 1 everywhere except the first `round(r * d_ff)` indices of `order`
    in every layer l >= skip (layers below skip are never touched). `[L, d_ff]` float.

    With `mean` (`[L, d_ff]`, the mean of m over the unrelated questions) it is mean-ablation instead:
    `[L, 2 * d_ff]`, the multiplier and then the value added, so masked m_j become mean_j."""
    L, d_ff = order.shape
    if skip >= L:
        raise ValueError(f"skip_layers={skip} leaves nothing to mask in a model of {L} layers")
    mask = torch.ones(L, d_ff)
    k = top_k(d_ff, ratio)
    if k:
        mask[skip:].scatter_(1, order[skip:, :k], 0.0)
    return mask if mean is None else torch.cat([mask, (1 - mask) * mean], dim=-1)


KINDS = ("located", "random", "matched")  # the located vectors, as many random ones, or as many magnitude-matched ones
LOCATORS = ("diff", "zscore")  # Eq. 5, or Eq. 5 over a pooled standard deviation (METHOD.md §4)
ZSCORE_EPS = 1e-6  # added to the pooled standard deviation: a unit never active scores 0, not 0/0
BIN_UNITS = 8  # units per magnitude bin of the matched control (METHOD.md §4)
AHEAD = 2  # the matched control's t-th choice avoids the located units up to place AHEAD * t (METHOD.md §4)


def half_of(question: int) -> int:
    """Split-half (METHOD.md §4): a concept's question k (its index in the concept's list) is in half k % 2."""
    return question % 2


def split_half(counts: list[int], i: int, others: list[int]) -> list[dict[str, list[tuple[int, int]]]]:
    """Per half h: the questions `(concept, index)` that locate concept i's mask (its own and its unrelated
    concepts' questions of half h) and those that mask scores (the rest of them: the other half)."""
    keys = [(j, k) for j in [i] + others for k in range(counts[j])]  # `questions_of`'s order
    return [{"locate": [q for q in keys if half_of(q[1]) == h], "score": [q for q in keys if half_of(q[1]) != h]}
            for h in (0, 1)]


def question_groups(n: int, split: bool) -> list[list[int]]:
    """The groups of a concept's n questions whose coefficient means are kept: all of them, and with
    split-half each half."""
    return [list(range(n))] + ([[k for k in range(n) if half_of(k) == h] for h in (0, 1)] if split else [])


@dataclass
class ConceptStats:
    """What locating reads per concept and group of its questions (`question_groups`): the mean of the
    per-question |m| `means` `[C, G, L, d_ff]`, with the zscore locator the mean of their squares
    `squares` (same shape), and the group sizes `counts` `[C][G]`."""
    means: torch.Tensor
    counts: list[list[int]]
    squares: torch.Tensor | None = None

    def unrelated(self, values: torch.Tensor, group: int, others: list[int]) -> torch.Tensor:
        return unrelated_mean(values[:, group], [c[group] for c in self.counts], others)


def group_stats(per_question: torch.Tensor, counts: list[int], split: bool, squares: bool = False) -> torch.Tensor:
    """`[C, G, L, d_ff]`: per concept (its questions consecutive in `per_question`, `counts` of them) and
    group of its questions, the mean of the rows of `per_question`, or of their squares."""
    out, start = [], 0
    for n in counts:
        rows = per_question[start:start + n]
        rows = rows.square() if squares else rows
        out.append(torch.stack([rows[g].mean(0) for g in question_groups(n, split)]))
        start += n
    return torch.stack(out)


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
    halves = [(g + 1, [position[q] for q in part["score"]]) for g, part in enumerate(split_half(counts, i, others))]
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


def concept_masks(i: int, cells: list[tuple[str, float]], coefficients: torch.Tensor, counts: list[int],
                  others: list[int], skip: int, seed: int, signed: torch.Tensor | None = None) -> torch.Tensor:
    """The masks of concept i's cells `(kind, ratio)`, `[N, L, d_ff]` (`[N, L, 2 * d_ff]` with `signed`,
    the signed coefficient means, for mean-ablation): its value vectors ranked by Eq. 5 against its
    unrelated concepts `others`, or the controls (`cell_masks` with every question locating)."""
    stats = ConceptStats(coefficients[:, None], [[n] for n in counts])
    return cell_masks(i, cells, stats, others, skip, seed, signed=signed)[0]


# ---------------------------------------------------------------- the value vectors §5 fine-tunes

VARIANTS = ("fv", "pv", "cv", "rv")


def located_scores(model, tok, concepts: list[Concept], names: list[str], n_unrelated: int = 5, seed: int = 0,
                   rank_by: str = "diff", draw: str = "any") -> torch.Tensor:
    """S = |m_t - m_t*| (Eq. 5) `[L, d_ff]` with t the questions of the named concepts together and t*
    the questions of their unrelated concepts (drawn as in a PSS run with the same seed, `n_unrelated`
    and `draw`), the named ones left out. `rank_by="abs"` ranks by the concepts' own |m| alone (the
    paper's "most highly activated"; METHOD.md §7)."""
    index = {c.name: i for i, c in enumerate(concepts)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ValueError(f"no concept named {', '.join(map(repr, unknown))}")
    chosen = [index[n] for n in names]
    drawn = unrelated_sets(concepts, n_unrelated, seed, draw)
    others = sorted({j for i in chosen for j in drawn[i]} - set(chosen))
    coeffs = collect_coefficients(model, tok, [concepts[i] for i in chosen + others])
    counts = [len(concepts[i].mcq) for i in chosen + others]
    m_t = unrelated_mean(coeffs, counts, list(range(len(chosen))))
    if rank_by == "abs":
        return m_t
    return locate(m_t, unrelated_mean(coeffs, counts, list(range(len(chosen), len(chosen) + len(others)))))


def value_vector_sets(variant: str, num_layers: int, d_ff: int, scores: torch.Tensor | None = None,
                      r_pv: float = 0.5 / 8, seed: int = 0, first_layer: int = 0) -> dict[int, list[int]]:
    """Column indices per layer (METHOD.md §7). `scores` `[L, d_ff]` is the locator score S for the union of
    the fine-tuned concepts; PV takes its top ceil(d_ff * r_pv) per layer in layers >= first_layer
    (default: every layer), CV the rest of every layer, RV as many random ones as PV per layer."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "fv":
        return {l: list(range(d_ff)) for l in range(num_layers)}
    if scores is None:
        raise ValueError(f"variant {variant!r} needs concepts to locate (--bench and --concepts)")
    k = math.ceil(d_ff * r_pv)
    order = ranking(scores)
    pv = {l: sorted(order[l, :k].tolist()) if l >= first_layer else [] for l in range(num_layers)}
    if variant == "pv":
        return pv
    if variant == "cv":
        return {l: sorted(set(range(d_ff)) - set(pv[l])) for l in range(num_layers)}
    shuffled = random_ranking((num_layers, d_ff), seed)
    return {l: sorted(shuffled[l, :len(pv[l])].tolist()) for l in range(num_layers)}
