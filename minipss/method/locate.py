"""The paper's method up to the masks: collect coefficients (§3.2), locate value vectors (Eq. 5), build
masks (Eq. 4, §4.1), and choose the value vectors §5 fine-tunes. Scores (Eq. 6) are in `scores`.

Section and equation numbers refer to the paper; decisions where it is silent are in
METHOD.md (§3-§7) and are switchable arguments here.
"""

from __future__ import annotations

import math

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


KINDS = ("located", "random")  # a cell masks the located vectors, or as many random ones (the control)


def concept_masks(i: int, cells: list[tuple[str, float]], coefficients: torch.Tensor, counts: list[int],
                  others: list[int], skip: int, seed: int, signed: torch.Tensor | None = None) -> torch.Tensor:
    """The masks of concept i's cells `(kind, ratio)`, `[N, L, d_ff]` (`[N, L, 2 * d_ff]` with `signed`,
    the signed coefficient means, for mean-ablation): its value vectors ranked by Eq. 5 against its
    unrelated concepts `others`, or in a random order seeded by `seed` and i (the control)."""
    scores = locate(coefficients[i], unrelated_mean(coefficients, counts, others))
    orders = {"located": ranking(scores), "random": random_ranking(scores.shape, seed * 1_000_003 + i)}
    fill = None if signed is None else unrelated_mean(signed, counts, others)
    return torch.stack([mask_for(orders[kind], r, skip, fill) for kind, r in cells])


# ---------------------------------------------------------------- the value vectors §5 fine-tunes

VARIANTS = ("fv", "pv", "cv", "rv")


def located_scores(model, tok, concepts: list[Concept], names: list[str], n_unrelated: int = 5, seed: int = 0,
                   rank_by: str = "diff") -> torch.Tensor:
    """S = |m_t - m_t*| (Eq. 5) `[L, d_ff]` with t the questions of the named concepts together and t*
    the questions of their unrelated concepts (drawn as in a PSS run with the same seed and
    `n_unrelated`), the named ones left out. `rank_by="abs"` ranks by the concepts' own |m| alone (the
    paper's "most highly activated"; METHOD.md §7)."""
    index = {c.name: i for i, c in enumerate(concepts)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ValueError(f"no concept named {', '.join(map(repr, unknown))}")
    chosen = [index[n] for n in names]
    drawn = unrelated_sets(concepts, n_unrelated, seed)
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
