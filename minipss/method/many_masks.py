"""Masked evaluation of many masks over one question set, sharing what a mask cannot change.

For a concept, every (ratio, control) mask scores the same questions (its own and the unrelated ones).
Blocks below `skip` see no mask (§4.1), so they run once for all masks; the prompts' common prefix (the
3-shot examples in `logits` and `generate` mode, each question's context in `cloze` mode) runs once per mask; the rest
runs as one batch whose rows carry their own masks. In `generate` mode the rows then decode together, each
leaving the batch once its answer is decided. Answers equal `pss.mcq_answers`, each mask alone (tested).
"""

from __future__ import annotations

import torch

from ..model.generate import GreedyHead, decode
from ..model.layers import KVCache
from ..model.padding import left_pad, right_pad
from .benchmark import MCQ
from .prompts import letter_decided, letter_in, mcq_prompt
from .pss import GENERATE_TOKENS, answer_of, cloze_tokens, letter_scores, letter_vocab, option_logprobs


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence shares, leaving each at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return max(n, 0)


def _check(mlp_masks: torch.Tensor, skip: int, d_ff: int) -> None:
    low = mlp_masks[:, :skip]
    if not bool((low[..., :d_ff] == 1).all() and (low[..., d_ff:] == 0).all()):
        raise ValueError(f"the engine shares blocks below {skip}: masks must leave them untouched")


def _subsets(which, n_masks: int, n_questions: int) -> list[list[int]]:
    """The questions each mask scores (indices into the question list); None: all of them."""
    if which is None:
        return [list(range(n_questions))] * n_masks
    if len(which) != n_masks:
        raise ValueError(f"`which` has {len(which)} entries for {n_masks} masks")
    return [list(w) for w in which]


def _mask_ranges(rows_per_mask: list[int], max_rows: int):
    """Consecutive ranges of masks with at most `max_rows` rows together (at least one mask each)."""
    start, total = 0, 0
    for m, n in enumerate(rows_per_mask):
        if m > start and total + n > max_rows:
            yield start, m
            start, total = m, 0
        total += n
    if start < len(rows_per_mask):
        yield start, len(rows_per_mask)


def _prompt_batches(model, tok, questions: list[MCQ], mlp_masks: torch.Tensor, skip: int, max_rows: int,
                    whole_cache: bool = False, which=None):
    """The 3-shot prompts of `questions` under every mask in `mlp_masks`, sharing work: blocks below `skip`
    run once for all masks (the common prefix once, then every question's suffix once), the prefix above
    `skip` once per mask, and the suffixes as batches of (mask, question) rows with per-row masks, sorted
    by length. Mask m scores the questions `which[m]` (default all). Yields per batch
    `(mask_index, question_index, x, cache, attention, real)`: the final residual stream of the suffix
    rows `[R, w, d]` (right-padded), the KV cache of the rows (layers >= skip; with `whole_cache` every
    layer), their attention mask `[R, n + w]` and the number of real tokens in each row."""
    dev, L = model.device, model.config.num_layers
    _check(mlp_masks, skip, model.config.intermediate_size)
    prompts = [tok.encode(mcq_prompt(q)) for q in questions]
    subsets = _subsets(which, mlp_masks.shape[0], len(prompts))
    n = common_prefix(prompts)
    Q = len(prompts)
    # below skip: no mask, so once for everything
    pre_ids = torch.tensor([prompts[0][:n]], device=dev)
    low = KVCache(L)
    pre_pos = torch.arange(n, device=dev)[None]
    x_pre = model.run_blocks(model.embed(pre_ids, pre_pos), 0, skip, cache=low) if n else None
    suf_ids, suf_mask = right_pad([p[n:] for p in prompts], tok.pad_id, dev)
    attn = torch.cat([torch.ones(Q, n, dtype=torch.long, device=dev), suf_mask], 1)
    pos = n + torch.arange(suf_ids.shape[1], device=dev).expand(Q, -1)
    low_q = low.rows(torch.zeros(Q, dtype=torch.long, device=dev)) if n else KVCache(L)
    x_suf = model.run_blocks(model.embed(suf_ids, pos), 0, skip, attn, pos, cache=low_q)
    lengths = suf_mask.sum(1)
    for m0, m1 in _mask_ranges([len(w) for w in subsets], 16 * max_rows):
        up = KVCache(L)
        if n:  # the shared prefix, once per mask
            model.run_blocks(x_pre.expand(m1 - m0, -1, -1), skip, L, mlp_mask=mlp_masks[m0:m1], cache=up)
        local = torch.tensor([m - m0 for m in range(m0, m1) for _ in subsets[m]], dtype=torch.long, device=dev)
        qs_all = torch.tensor([q for m in range(m0, m1) for q in subsets[m]], dtype=torch.long, device=dev)
        for batch in torch.argsort(lengths[qs_all], stable=True).split(max_rows):  # similar lengths together
            rows, qs = local[batch], qs_all[batch]
            w = int(lengths[qs].max())
            cache = up.rows(rows) if n else KVCache(L)
            x = model.run_blocks(x_suf[qs, :w], skip, L, attn[qs, :n + w], pos[qs, :w],
                                 mlp_mask=mlp_masks[m0 + rows], cache=cache)
            if whole_cache:  # the rows' own copy of the shared lower layers
                for i in range(skip):
                    cache.k[i], cache.v[i] = low_q.k[i][qs, :, :n + w], low_q.v[i][qs, :, :n + w]
            yield m0 + rows, qs, x, cache, attn[qs, :n + w], n + lengths[qs]


def _at_last_token(x: torch.Tensor, attention: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Each row's state at its last real token: `x` `[R, w, d]` holds `_prompt_batches`' suffix states, after
    a shared prefix that `attention` covers too; `real` counts the prefix's tokens as well."""
    prefix = attention.shape[1] - x.shape[1]
    return x[torch.arange(len(x), device=x.device), real - 1 - prefix]


class Answers:
    """Answers as they are found: `put(mask, question, answer)`; once every question of a mask is answered,
    `on_mask(mask, its answers in the order of its questions)` runs (so a caller can save that mask's cell
    at once); `progress(n)` hears of every n (mask, question) rows done. `by_mask()`: one list per mask."""

    def __init__(self, subsets: list[list[int]], on_mask=None, progress=None):
        self.subsets, self.on_mask, self.progress = subsets, on_mask, progress
        self.found, self.missing = {}, [len(set(qs)) for qs in subsets]

    def put(self, m: int, q: int, answer) -> None:
        if (m, q) in self.found:
            return
        self.found[m, q] = answer
        self.missing[m] -= 1
        if self.missing[m] == 0 and self.on_mask is not None:
            self.on_mask(m, [self.found[m, k] for k in self.subsets[m]])

    def rows_done(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress(n)

    def by_mask(self) -> list[list]:
        return [[self.found[m, q] for q in qs] for m, qs in enumerate(self.subsets)]


@torch.inference_mode()
def letter_answers(model, tok, questions: list[MCQ], mlp_masks: torch.Tensor, skip: int,
                   max_rows: int | None = None, which=None, on_mask=None, progress=None,
                   scores: bool = False) -> list[list]:
    """`logits` mode for every mask in `mlp_masks` `[M, L, d_ff]`: answers `[M][Q]` (or, with `which`, mask
    m's answers to the questions `which[m]`); with `scores`, each question's four letter scores instead
    (`pss.letter_scores`). Only the letter rows of the output matrix are multiplied (they are all the mode
    reads). `on_mask` and `progress` as in `Answers`."""
    dev = model.device
    max_rows = max_rows or (32 if dev.type == "cpu" else 512)  # measured: small batches stay in CPU caches
    vocab, owner = letter_vocab(tok)
    vocab = vocab.to(dev)
    found = Answers(_subsets(which, mlp_masks.shape[0], len(questions)), on_mask, progress)
    for ms, qs, x, _, attn, real in _prompt_batches(model, tok, questions, mlp_masks, skip, max_rows, which=which):
        found.rows_done(len(qs))
        letters = letter_scores(model.head(_at_last_token(x, attn, real), vocab), owner)
        for m, q, s in zip(ms.tolist(), qs.tolist(), letters):
            found.put(m, q, s if scores else answer_of(s))
    return found.by_mask()


def left_align(cache: KVCache, attention: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Moves each row's cached keys and values so that its `real` tokens end at the last slot and its
    padding comes first, as in a left-padded batch; returns the matching attention mask. Keys carry their
    positions already (RoPE is applied before caching), so only the slots move; from there on a key's
    slot distance to later tokens is its real distance, as sliding windows and ALiBi need."""
    R, W = attention.shape
    slots = torch.arange(W, device=attention.device)
    pad = (W - real)[:, None]
    source = (slots[None] - pad) % W  # slot j takes old slot j - pad: padding (at the end) wraps to the front
    for layer in range(len(cache.k)):
        if cache.k[layer] is not None:
            idx = source[:, None, :, None].expand_as(cache.k[layer])
            cache.k[layer], cache.v[layer] = cache.k[layer].gather(2, idx), cache.v[layer].gather(2, idx)
    return (slots[None] >= pad).long()


@torch.inference_mode()
def generate_answers(model, tok, questions: list[MCQ], mlp_masks: torch.Tensor, skip: int,
                     max_rows: int | None = None, max_new_tokens: int = GENERATE_TOKENS,
                     early_stop: bool = True, return_tokens: bool = False, which=None, on_mask=None,
                     progress=None):
    """`generate` mode (the paper's) for every mask in `mlp_masks` `[M, L, d_ff]`: answers `[M][Q]`, the first
    standalone letter in up to `max_new_tokens` greedy tokens (EOS ends a row). The prompts share work as
    in `letter_answers`; then all (mask, question) rows of a batch decode together (`generate.decode`),
    each with its own mask, leaving the batch at EOS or, with `early_stop`, as soon as more tokens cannot
    change its letter (`prompts.letter_decided`). `which` as in `letter_answers`. With `return_tokens`,
    also the generated ids, in the same layout. `on_mask` and `progress` (a row counts once it has left
    the batch) as in `Answers`."""
    max_rows = max_rows or (64 if model.device.type == "cpu" else 512)
    greedy = GreedyHead(model)
    stop = (lambda ids: letter_decided(tok.decode(ids))) if early_stop else None
    subsets = _subsets(which, mlp_masks.shape[0], len(questions))
    found, tokens = Answers(subsets, on_mask, progress), {}
    for ms, qs, x, cache, attn, real in _prompt_batches(model, tok, questions, mlp_masks, skip, max_rows,
                                                        whole_cache=True, which=which):
        last = _at_last_token(x, attn, real)
        # positions count real tokens from 0, as left_pad gives them: the first new token's is `real`
        out, _ = decode(model, last, cache, left_align(cache, attn, real), real[:, None], max_new_tokens, greedy,
                        tok.eos_ids, mlp_masks[ms], stop, found.rows_done)
        for r, (m, q) in enumerate(zip(ms.tolist(), qs.tolist())):
            tokens[m, q] = out[r]
            found.put(m, q, letter_in(tok.decode(out[r])))
    answers = found.by_mask()
    return (answers, [[tokens[m, q] for q in qs] for m, qs in enumerate(subsets)]) if return_tokens else answers


def answers(model, tok, questions: list[MCQ], mlp_masks: torch.Tensor, skip: int, mode: str,
            cloze_mean: bool = False, early_stop: bool = True, which=None, on_mask=None,
            progress=None, scores: bool = False) -> list[list]:
    """The answers `[M][Q]` of every mask in `mlp_masks` in scoring mode `mode` (METHOD.md §5); with `which`,
    mask m's answers to the questions `which[m]` only; with `scores` (cloze and logits modes), each
    question's four option scores instead, as `pss.mcq_scores` gives them (`pss.answer_of` reads the answer,
    `pss.p_correct` the graded outcome). `on_mask(m, answers)` runs as soon as mask m's questions are all
    answered, `progress(n)` as every n (mask, question) rows are done (`Answers`)."""
    if scores and mode not in ("cloze", "logits"):
        raise ValueError(f"mode {mode!r} has no option scores; choose cloze or logits")
    if mode == "logits":
        return letter_answers(model, tok, questions, mlp_masks, skip, which=which, on_mask=on_mask, progress=progress,
                              scores=scores)
    if mode == "cloze":
        return cloze_answers(model, tok, questions, mlp_masks, skip, mean=cloze_mean, which=which, on_mask=on_mask,
                             progress=progress, scores=scores)
    if mode == "generate":
        return generate_answers(model, tok, questions, mlp_masks, skip, early_stop=early_stop, which=which,
                                on_mask=on_mask, progress=progress)
    raise ValueError(f"unknown mode {mode!r}; choose one of generate, logits, cloze")


@torch.inference_mode()
def cloze_answers(model, tok, questions: list[MCQ], mlp_masks: torch.Tensor, skip: int, mean: bool = False,
                  max_rows: int | None = None, which=None, on_mask=None, progress=None,
                  scores: bool = False) -> list[list]:
    """`cloze` mode for every mask in `mlp_masks` `[M, L, d_ff]`: answers `[M][Q]` (with `which`, mask m's
    answers to the questions `which[m]`); with `scores`, each question's option log-probs instead
    (`pss.option_logprobs`). `on_mask` and `progress` as in `Answers`."""
    dev, L = model.device, model.config.num_layers
    max_rows = max_rows or (256 if dev.type == "cpu" else 1024)
    _check(mlp_masks, skip, model.config.intermediate_size)
    contexts, options = zip(*(cloze_tokens(tok, q) for q in questions))
    subsets = _subsets(which, mlp_masks.shape[0], len(questions))
    per_q = [len(o) for o in options]
    option_question = torch.tensor([i for i, k in enumerate(per_q) for _ in range(k)], device=dev)
    first_option = [sum(per_q[:i]) for i in range(len(per_q))]
    # below skip, once: contexts (left-padded), then every option (right-padded) reading its context
    c_ids, c_attn, c_pos = left_pad(list(contexts), 0, dev)
    low = KVCache(L)
    x_ctx = model.run_blocks(model.embed(c_ids, c_pos), 0, skip, c_attn, c_pos, cache=low)
    o_ids, o_mask = right_pad([o for question_options in options for o in question_options], 0, dev)
    o_attn = torch.cat([c_attn[option_question], o_mask], 1)
    o_pos = c_pos[option_question, -1:] + 1 + torch.arange(o_ids.shape[1], device=dev)
    x_opt = model.run_blocks(model.embed(o_ids, o_pos), 0, skip, o_attn, o_pos, cache=low.rows(option_question))
    found = Answers(subsets, on_mask, progress)
    for m0, m1 in _mask_ranges([sum(per_q[q] for q in w) for w in subsets], max_rows):
        # one context row per (mask, question), then one option row per option of each context row
        pairs = [(m, q) for m in range(m0, m1) for q in subsets[m]]
        mask_of_context = torch.tensor([m for m, _ in pairs], dtype=torch.long, device=dev)
        context_question = torch.tensor([q for _, q in pairs], dtype=torch.long, device=dev)
        up = KVCache(L)
        c_last = model.run_blocks(x_ctx[context_question], skip, L, c_attn[context_question], c_pos[context_question],
                                  mlp_mask=mlp_masks[mask_of_context], cache=up)[:, -1]
        option_context = torch.tensor([r for r, (_, q) in enumerate(pairs) for _ in range(per_q[q])], device=dev)
        option_index = torch.tensor([first_option[q] + k for _, q in pairs for k in range(per_q[q])], device=dev)
        x = model.run_blocks(x_opt[option_index], skip, L, o_attn[option_index], o_pos[option_index],
                             mlp_mask=mlp_masks[mask_of_context[option_context]], cache=up.rows(option_context))
        totals = option_logprobs(model, c_last[option_context], x, o_ids[option_index], o_mask[option_index],
                               mean).tolist()
        start = 0
        found.rows_done(len(pairs))
        for m, q in pairs:
            options = totals[start:start + per_q[q]]
            found.put(m, q, options if scores else answer_of(options))
            start += per_q[q]
    return found.by_mask()
