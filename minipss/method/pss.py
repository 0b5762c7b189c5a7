"""The paper's method (§3-4), top to bottom, one function per step:

    coefficients m per question (§3.2) -> m and m* per concept -> S = |m - m*| (Eq. 5) -> the top-k mask
    from layer `skip` on (Eq. 4) -> answers under the mask (§4.1) -> Concept / General accuracy -> PSS
    (Eq. 6) and the excess drop

Every other module calls these: the controls and split-half (`controls`), the many-mask engine
(`many_masks`, tested equal to `mcq_answers`), the pipeline and the walkthrough. Decisions where the paper
is silent are in METHOD.md (§3-§6) and are switchable arguments here.
"""

from __future__ import annotations

import math

import torch

from ..model.decoder import Coefficients
from ..model.generate import generate
from ..model.layers import KVCache
from ..model.padding import left_pad, right_pad
from .benchmark import LETTERS, MCQ, Concept
from .prompts import cloze_context, coefficient_prompt, letter_decided, letter_in, mcq_prompt

TOKEN_RULES = ("content", "all", "last")  # which tokens a question's mean |m| covers (METHOD.md §3)
MODES = ("generate", "logits", "cloze")  # how a question is answered (METHOD.md §5)
GENERATE_TOKENS = 30  # generate mode: greedy tokens at most (Appendix B.1)


# ---------------------------------------------------------------- §3.2: the coefficients m


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


@torch.inference_mode()
def question_coefficients(model, tok, texts: list[str], token_rule: str = "content",
                          batch_size: int = 32, absolute: bool = True, progress=None) -> torch.Tensor:
    """§3.2, Appendix B.1: per text, the mean |m| (m itself when not `absolute`) over its tokens, per
    layer: `[N, L, d_ff]` in fp32. `progress(n)`, if given, hears of every n texts done."""
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


def concept_means(per_question: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """§3.2: m per concept, `[C, L, d_ff]`, the mean of its questions' rows of `per_question` (the
    concepts' questions consecutive, `counts` of them each)."""
    out, start = [], 0
    for n in counts:
        out.append(per_question[start:start + n].mean(0))
        start += n
    return torch.stack(out)


def collect_coefficients(model, tok, concepts: list[Concept], token_rule: str = "content",
                         batch_size: int = 32, absolute: bool = True, progress=None) -> torch.Tensor:
    """§3.2: m per concept `[C, L, d_ff]`, each question read as `Question: {q} Answer: {correct option}`."""
    texts = [coefficient_prompt(q) for c in concepts for q in c.mcq]
    per_question = question_coefficients(model, tok, texts, token_rule, batch_size, absolute, progress)
    return concept_means(per_question, [len(c.mcq) for c in concepts])


def unrelated_mean(means: torch.Tensor, counts: list[int], others: list[int]) -> torch.Tensor:
    """§3.2: m*, the mean over the unrelated questions: the question-weighted mean of the concepts
    `others` (rows of `means`, `counts[j]` questions each)."""
    w = torch.tensor([counts[j] for j in others], dtype=means.dtype)
    return (means[others] * w[:, None, None]).sum(0) / w.sum()


# ---------------------------------------------------------------- Eq. 5 and Eq. 4: locate, then mask


def locate(m_concept: torch.Tensor, m_unrelated: torch.Tensor) -> torch.Tensor:
    """Eq. 5: the specificity score S^l_j = |m^l_j - m*^l_j| of every value vector, `[L, d_ff]`."""
    return (m_concept - m_unrelated).abs()


def top_k(d_ff: int, ratio: float) -> int:
    """§4.1: round(r * d_ff) vectors per layer (half up, so 0.5 rounds to 1; METHOD.md §4)."""
    return int(math.floor(ratio * d_ff + 0.5))


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Per layer, value-vector indices from highest score down; ties go to the lower index (METHOD.md §4)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def mask_for(order: torch.Tensor, ratio: float, skip: int, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4, §4.1: zero-masking, `[L, d_ff]` float: 1 everywhere except the first `round(r * d_ff)` indices
    of `order` in every layer l >= skip (layers below skip are never touched).

    With `mean` (`[L, d_ff]`, the mean of m over the unrelated questions) it is mean-ablation instead:
    `[L, 2 * d_ff]`, the multiplier and then the value added, so masked m_j become mean_j (METHOD.md §4)."""
    L, d_ff = order.shape
    if skip >= L:
        raise ValueError(f"skip_layers={skip} leaves nothing to mask in a model of {L} layers")
    mask = torch.ones(L, d_ff)
    k = top_k(d_ff, ratio)
    if k:
        mask[skip:].scatter_(1, order[skip:, :k], 0.0)
    return mask if mean is None else torch.cat([mask, (1 - mask) * mean], dim=-1)


# ---------------------------------------------------------------- §4.1: answering under one mask


def mask_rows(mlp_mask, idx):
    """The masks of these questions: a shared `[L, d_ff]` (or `[1, L, d_ff]`) mask serves every row."""
    return mlp_mask if mlp_mask is None or mlp_mask.dim() == 2 or mlp_mask.shape[0] == 1 else mlp_mask[idx]


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def letter_vocab(tok) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits` mode: the ids of every single-token spelling of the letters (` X` and `X`) and, per id, the
    index of its letter in `ABCD`: the only logits the mode reads (METHOD.md §5)."""
    ids, owner = [], []
    for i, letter in enumerate(LETTERS):
        spellings = {tuple(tok.encode(s, bos=False)) for s in (f" {letter}", letter)}
        single = sorted(t[0] for t in spellings if len(t) == 1)
        if not single:
            raise ValueError(f"the tokenizer has no single token for {letter!r}; use --mode cloze or generate")
        ids += single
        owner += [i] * len(single)
    return torch.tensor(ids), torch.tensor(owner)


def letter_scores(letter_logits: torch.Tensor, owner: torch.Tensor) -> list[list[float]]:
    """Per row of logits over `letter_vocab`'s ids `[N, V]`, each letter's score: its best spelling's logit."""
    N = letter_logits.shape[0]
    best = torch.full((N, len(LETTERS)), float("-inf"), device=letter_logits.device).scatter_reduce(
        1, owner.to(letter_logits.device).expand(N, -1), letter_logits.float(), reduce="amax")
    return best.tolist()


def cloze_tokens(tok, q: MCQ) -> tuple[list[int], list[list[int]]]:
    """`cloze` mode: context ids and each option's ids, the tokens of `context + " " + option` after the
    context's own tokens, which must be their prefix (METHOD.md §5)."""
    context = cloze_context(q.question)
    ctx = tok.encode(context)
    options = []
    for text in q.options.values():
        full = tok.encode(f"{context} {text}")
        if full[: len(ctx)] != ctx or len(full) == len(ctx):
            raise ValueError(f"cloze: the tokens of {context!r} are not a prefix of those with option {text!r}")
        options.append(full[len(ctx):])
    return ctx, options


def target_logprobs(model, x: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """log p(target) from final residual states `x` `[P, d]`: the head runs only on these rows, a chunk
    at a time, so a 262k-token vocabulary never fills memory."""
    out = []
    for start in range(0, x.shape[0], chunk):
        logits = model.head(x[start:start + chunk]).float()
        picked = logits.gather(1, targets[start:start + chunk, None]).squeeze(1)
        out.append(picked - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.float32)


def option_logprobs(model, context_last: torch.Tensor, option_states: torch.Tensor, option_ids: torch.Tensor,
                    option_mask: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """Summed (with `mean`, mean) log-prob of each option's tokens, `[P]`: token 0 is predicted by its
    context's last state `context_last` `[P, d]`, token t by the option's own state at t - 1
    (`option_states` `[P, W, d]`, right-padded; `option_mask` marks the real tokens)."""
    first = target_logprobs(model, context_last, option_ids[:, 0])
    later = option_mask[:, 1:].bool()
    rest = torch.zeros(len(option_ids), option_ids.shape[1] - 1, device=option_ids.device)
    rest[later] = target_logprobs(model, option_states[:, :-1][later], option_ids[:, 1:][later])
    totals = first + rest.sum(1)
    return totals / option_mask.sum(1) if mean else totals


def cloze_scores(model, contexts: list[list[int]], options: list[list[list[int]]], mlp_mask=None,
                 mean: bool = False) -> list[list[float]]:
    """Summed (or mean) log-prob of each option after its context. The context runs once into a KV
    cache; the options of all questions then run as one right-padded batch reading that cache."""
    device = model.device
    ids, attn, pos = left_pad(contexts, 0, device)
    cache = KVCache(model.config.num_layers)
    ctx_last = model.run_blocks(model.embed(ids, pos), attention_mask=attn, position_ids=pos, mlp_mask=mlp_mask,
                                cache=cache)[:, -1]
    per_q = [len(o) for o in options]
    owner = torch.tensor([i for i, n in enumerate(per_q) for _ in range(n)], device=device)
    opt_ids, opt_mask = right_pad([opt for opts in options for opt in opts], 0, device)
    opt_pos = pos[owner, -1:] + 1 + torch.arange(opt_ids.shape[1], device=device)
    x = model.run_blocks(model.embed(opt_ids, opt_pos), attention_mask=torch.cat([attn[owner], opt_mask], 1),
                         position_ids=opt_pos, mlp_mask=mask_rows(mlp_mask, owner), cache=cache.rows(owner))
    totals = option_logprobs(model, ctx_last[owner], x, opt_ids, opt_mask, mean)
    return [t.tolist() for t in totals.split(per_q)]


def answer_of(scores: list[float]) -> str:
    """The letter of the highest of a question's four option scores (ties: the earlier option)."""
    return LETTERS[max(range(len(scores)), key=scores.__getitem__)]


def p_correct(scores: list[float], answer: str) -> float:
    """The graded outcome (METHOD.md §5): the probability of the correct option `answer` among the four, a
    softmax over the option scores; `answer_of` is its argmax."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    return weights[LETTERS.index(answer)] / sum(weights)


@torch.inference_mode()
def mcq_scores(model, tok, questions: list[MCQ], mode: str = "cloze", mlp_mask=None, batch_size: int = 32,
               cloze_mean: bool = False) -> list[list[float]]:
    """Each question's four option scores under `mlp_mask` (`None`, one `[L, d_ff]` mask, or `[N, L, d_ff]`,
    one per question), one batch at a time: `cloze` the options' summed (with `cloze_mean`, mean) log-probs
    after `Question: ...\\nAnswer:`, `logits` the four letters' logits at the first generated position after
    the 3-shot prompt (METHOD.md §5). `answer_of` picks the answer."""
    if mode not in ("cloze", "logits"):
        raise ValueError(f"mode {mode!r} has no option scores; choose cloze or logits")
    scores: list[list[float]] = []
    vocab, owner = letter_vocab(tok) if mode == "logits" else (None, None)
    for idx in batches(len(questions), batch_size):
        rows_mask = mask_rows(mlp_mask, idx)
        if mode == "cloze":
            ctx, opts = zip(*(cloze_tokens(tok, questions[i]) for i in idx))
            scores += cloze_scores(model, list(ctx), list(opts), rows_mask, cloze_mean)
        else:
            ids, attn, pos = left_pad([tok.encode(mcq_prompt(questions[i])) for i in idx], tok.pad_id, model.device)
            logits = model(ids, attention_mask=attn, position_ids=pos, mlp_mask=rows_mask, logits_to_keep=1).logits
            scores += letter_scores(logits[:, -1, vocab.to(logits.device)], owner)
    return scores


@torch.inference_mode()
def mcq_answers(model, tok, questions: list[MCQ], mode: str = "generate", mlp_mask=None,
                batch_size: int = 32, early_stop: bool = True, cloze_mean: bool = False) -> list[str | None]:
    """§4.1: the model's answer letter (or None) to each question under `mlp_mask` (as in `mcq_scores`):
    the best of `mcq_scores` in `cloze` and `logits` mode; in `generate` mode (the paper's) the first
    standalone letter of up to 30 greedy tokens after the 3-shot prompt, a row stopping once its letter is
    decided with `early_stop` (the same answers; METHOD.md §5). The plain form that `many_masks` equals."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "generate":
        return [answer_of(s) for s in mcq_scores(model, tok, questions, mode, mlp_mask, batch_size, cloze_mean)]
    answers: list[str | None] = []
    stop = (lambda ids: letter_decided(tok.decode(ids))) if early_stop else None
    for idx in batches(len(questions), batch_size):
        prompts = [tok.encode(mcq_prompt(questions[i])) for i in idx]
        outs = generate(model, prompts, GENERATE_TOKENS, tok.eos_ids, tok.pad_id, mlp_mask=mask_rows(mlp_mask, idx),
                        stop_when=stop)
        answers += [letter_in(tok.decode(o)) for o in outs]
    return answers


# ---------------------------------------------------------------- Eq. 6: accuracies, PSS, excess drop


def accuracy(correct: list[bool]) -> float | None:
    return sum(correct) / len(correct) if correct else None


def concept_and_general(correct: list[bool], n_own: int) -> tuple[float | None, float | None]:
    """§4.1: Concept accuracy (the concept's own questions t, the first `n_own`) and General accuracy (its
    unrelated questions t*, the rest)."""
    return accuracy(correct[:n_own]), accuracy(correct[n_own:])


def ratio_of(a: float | None, b: float | None) -> float | None:
    """a / b, or None (null in the result file) when either is missing or b is 0."""
    return None if a is None or not b else a / b


def excess_drop(before_c: float, before_g: float, after_c: float, after_g: float) -> float:
    """The concept's drop beyond the unrelated questions' drop (METHOD.md §6): (Concept_before -
    Concept_after) - (General_before - General_after), free of the gap between their baselines."""
    return (before_c - after_c) - (before_g - after_g)


def concept_cell(before_c: float, before_g: float, after_c: float, after_g: float, acc_before: float,
                 ratio: float) -> dict:
    """Every score of one concept at one ratio: PSS(c, r) = |General_after - Concept_after| /
    General_before(c) (Eq. 6), the raw parts and the other denominators, the excess drop (METHOD.md §6)."""
    diff = after_g - after_c
    cell = {
        "concept_after": after_c, "general_after": after_g, "g_minus_c": diff,
        "pss": ratio_of(abs(diff), before_g),  # per-concept denominator: General_before(c)
        "pss_acc_before": ratio_of(abs(diff), acc_before),
        "pss_raw": abs(diff),
        "excess_drop": excess_drop(before_c, before_g, after_c, after_g),
    }
    if ratio == 0:  # nothing masked: PSS is 0 by definition (Figure 3's origin)
        cell.update(pss=0.0, pss_acc_before=0.0, pss_raw=0.0)
    return cell


def model_pss(concept_after: list[float], general_after: list[float], acc_before: float,
              ratio: float) -> float | None:
    """Eq. 6: PSS(r) = |mean_c General_after(c, r) - mean_c Concept_after(c, r)| / Acc_before."""
    if ratio == 0:
        return 0.0
    gap = abs(sum(general_after) / len(general_after) - sum(concept_after) / len(concept_after))
    return ratio_of(gap, acc_before)


def mean(values) -> float | None:
    """The mean of the values that are not None (None if there are none): PSS averages over ratios."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
