"""Masked evaluation of many masks over one question set, sharing what a mask cannot change.

For a concept, every (ratio, control) mask scores the same questions (its own and the unrelated ones).
Blocks below `skip` see no mask (§4.1), so they run once for all masks; the prompts' common prefix (the
3-shot examples in `logits` and `generate` mode, each question's context in `cloze` mode) runs once per mask; the rest
runs as one batch whose rows carry their own masks. In `generate` mode the rows then decode together, each
leaving the batch once its answer is decided. Answers equal scoring each mask alone (tested).
"""

from __future__ import annotations

import torch

from .benchmark import MCQ
from .generate import left_pad, right_pad
from .layers import KVCache
from .prompts import letter_decided, letter_in, mcq_prompt
from .scoring import GENERATE_TOKENS, cloze_tokens, letter_token_ids, target_logprobs


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence shares, leaving each at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return max(n, 0)


def _chunks(masks: torch.Tensor, rows_per_mask: int, max_rows: int, skip: int, d_ff: int):
    low = masks[:, :skip]
    if not bool((low[..., :d_ff] == 1).all() and (low[..., d_ff:] == 0).all()):
        raise ValueError(f"the engine shares blocks below {skip}: masks must leave them untouched")
    per = max(1, max_rows // max(rows_per_mask, 1))
    for start in range(0, masks.shape[0], per):
        yield masks[start:start + per]


def _buckets(lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Indices sorted by length, cut into groups of at most `size`."""
    order = torch.argsort(lengths, stable=True)
    return list(order.split(size))


def _prompt_batches(model, tok, questions: list[MCQ], masks: torch.Tensor, skip: int, max_rows: int,
                    whole_cache: bool = False):
    """The 3-shot prompts of `questions` under every mask in `masks`, sharing work: blocks below `skip` run
    once for all masks (the common prefix once, then every question's suffix once), the prefix above
    `skip` once per mask, and the suffixes as batches of (mask, question) rows with per-row masks, in
    buckets of similar length. Yields per batch `(mask_index, question_index, x, cache, attention, real)`:
    the final residual stream of the suffix rows `[R, w, d]` (right-padded), the KV cache of the rows
    (layers >= skip; with `whole_cache` every layer), their attention mask `[R, n + w]` and the number of
    real tokens in each row."""
    dev, L = model.device, model.config.num_layers
    prompts = [tok.encode(mcq_prompt(q)) for q in questions]
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
    done = 0
    for chunk in _chunks(masks, Q, max_rows, skip, model.config.intermediate_size):
        M = chunk.shape[0]
        up = KVCache(L)
        if n:  # the shared prefix, once per mask
            model.run_blocks(x_pre.expand(M, -1, -1), skip, L, mlp_mask=chunk, cache=up)
        for bucket in _buckets(lengths, max(1, max_rows // M)):  # similar lengths together: less padding
            B, w = len(bucket), int(lengths[bucket].max())
            rows = torch.arange(M, device=dev).repeat_interleave(B)
            qs = bucket.repeat(M)
            cache = up.rows(rows) if n else KVCache(L)
            x = model.run_blocks(x_suf[qs, :w], skip, L, attn[qs, :n + w], pos[qs, :w], mlp_mask=chunk[rows],
                                 cache=cache)
            if whole_cache:  # the rows' own copy of the shared lower layers
                for i in range(skip):
                    cache.k[i], cache.v[i] = low_q.k[i][qs, :, :n + w], low_q.v[i][qs, :, :n + w]
            yield done + rows, qs, x, cache, attn[qs, :n + w], n + lengths[qs]
        done += M


@torch.inference_mode()
def letter_answers(model, tok, questions: list[MCQ], masks: torch.Tensor, skip: int,
                   max_rows: int | None = None) -> list[list[str]]:
    """`logits` mode for every mask in `masks` `[M, L, d_ff]`: answers `[M][Q]`. Only the four letter
    rows of the output matrix are multiplied (their argmax is all the mode reads)."""
    dev = model.device
    max_rows = max_rows or (32 if dev.type == "cpu" else 512)  # measured: small batches stay in CPU caches
    letters = letter_token_ids(tok)
    vocab = torch.tensor([t for L_ in "ABCD" for t in letters[L_]], device=dev)
    owner = torch.tensor([i for i, L_ in enumerate("ABCD") for _ in letters[L_]], device=dev)
    answers = [[None] * len(questions) for _ in range(masks.shape[0])]
    for ms, qs, x, _, attn, real in _prompt_batches(model, tok, questions, masks, skip, max_rows):
        R = len(qs)
        h = x[torch.arange(R, device=dev), real - 1 - (attn.shape[1] - x.shape[1])]
        logits = model.head(h, vocab).float()
        best = torch.full((R, 4), float("-inf"), device=dev).scatter_reduce(
            1, owner.expand(R, -1), logits, reduce="amax").argmax(-1).tolist()
        for r, (m, q) in enumerate(zip(ms.tolist(), qs.tolist())):
            answers[m][q] = "ABCD"[best[r]]
    return answers


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
def generate_answers(model, tok, questions: list[MCQ], masks: torch.Tensor, skip: int,
                     max_rows: int | None = None, max_new_tokens: int = GENERATE_TOKENS,
                     early_stop: bool = True, return_tokens: bool = False):
    """`generate` mode (the paper's) for every mask in `masks` `[M, L, d_ff]`: answers `[M][Q]`, the first
    standalone letter in up to `max_new_tokens` greedy tokens (EOS ends a row). The prompts share work as
    in `letter_answers`; then all (mask, question) rows of a batch decode together, each with its own
    mask, and a row leaves the batch at EOS or, with `early_stop`, as soon as more tokens cannot change
    its letter (`prompts.letter_decided`). With `return_tokens`, also the generated ids `[M][Q]`."""
    dev, L = model.device, model.config.num_layers
    max_rows = max_rows or (64 if dev.type == "cpu" else 512)
    eos = torch.tensor(list(tok.eos_ids) or [-1], device=dev)
    answers = [[None] * len(questions) for _ in range(masks.shape[0])]
    tokens = [[None] * len(questions) for _ in range(masks.shape[0])]
    for ms, qs, x, cache, attn, real in _prompt_batches(model, tok, questions, masks, skip, max_rows,
                                                        whole_cache=True):
        R = len(qs)
        h = x[torch.arange(R, device=dev), real - 1 - (attn.shape[1] - x.shape[1])]
        nxt = model.head(h).float().argmax(-1)
        attn = left_align(cache, attn, real)
        row_masks = masks[ms]
        alive = torch.arange(R, device=dev)
        pos = real[:, None]  # positions count real tokens from 0, as left_pad gives them
        out = [[] for _ in range(R)]
        for step in range(max_new_tokens):
            finished = torch.isin(nxt, eos).tolist()
            for j, (r, t) in enumerate(zip(alive.tolist(), nxt.tolist())):
                if not finished[j]:
                    out[r].append(t)
                    finished[j] = early_stop and letter_decided(tok.decode(out[r]))
            keep = ~torch.tensor(finished, device=dev)
            if step == max_new_tokens - 1 or not keep.any():
                break
            if not keep.all():
                alive, nxt, attn, pos = alive[keep], nxt[keep], attn[keep], pos[keep]
                cache = cache.rows(keep.nonzero().squeeze(1))
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            x = model.run_blocks(model.embed(nxt[:, None], pos), 0, L, attn, pos, mlp_mask=row_masks[alive],
                                 cache=cache)
            nxt = model.head(x[:, -1]).float().argmax(-1)
            pos = pos + 1
        for r, (m, q) in enumerate(zip(ms.tolist(), qs.tolist())):
            answers[m][q], tokens[m][q] = letter_in(tok.decode(out[r])), out[r]
    return (answers, tokens) if return_tokens else answers


def answers(model, tok, questions: list[MCQ], masks: torch.Tensor, skip: int, mode: str,
            cloze_mean: bool = False, early_stop: bool = True) -> list[list[str | None]]:
    """The answers `[M][Q]` of every mask in `masks` in scoring mode `mode` (spec §5)."""
    if mode == "logits":
        return letter_answers(model, tok, questions, masks, skip)
    if mode == "cloze":
        return cloze_answers(model, tok, questions, masks, skip, mean=cloze_mean)
    if mode == "generate":
        return generate_answers(model, tok, questions, masks, skip, early_stop=early_stop)
    raise ValueError(f"unknown mode {mode!r}; choose one of generate, logits, cloze")


@torch.inference_mode()
def cloze_answers(model, tok, questions: list[MCQ], masks: torch.Tensor, skip: int, mean: bool = False,
                  max_rows: int | None = None) -> list[list[str]]:
    """`cloze` mode for every mask in `masks` `[M, L, d_ff]`: answers `[M][Q]`."""
    dev, L = model.device, model.config.num_layers
    max_rows = max_rows or (256 if dev.type == "cpu" else 1024)
    ctx, opts = zip(*(cloze_tokens(tok, q) for q in questions))
    Q = len(ctx)
    per_q = [len(o) for o in opts]
    owner = torch.tensor([i for i, k in enumerate(per_q) for _ in range(k)], device=dev)
    O = len(owner)
    flat = [o for os_ in opts for o in os_]
    # below skip, once: contexts (left-padded), then options (right-padded) reading their context
    c_ids, c_attn, c_pos = left_pad(list(ctx), 0, dev)
    low = KVCache(L)
    x_ctx = model.run_blocks(model.embed(c_ids, c_pos), 0, skip, c_attn, c_pos, cache=low)
    o_ids, o_mask = right_pad(flat, 0, dev)
    W = o_ids.shape[1]
    o_attn = torch.cat([c_attn[owner], o_mask], 1)
    o_pos = c_pos[owner, -1:] + 1 + torch.arange(W, device=dev)
    low_o = low.rows(owner)
    x_opt = model.run_blocks(model.embed(o_ids, o_pos), 0, skip, o_attn, o_pos, cache=low_o)
    later = o_mask[:, 1:].bool()
    answers = []
    for chunk in _chunks(masks, O, max_rows, skip, model.config.intermediate_size):
        M = chunk.shape[0]
        cq = torch.arange(Q, device=dev).repeat(M)
        crow = torch.arange(M, device=dev).repeat_interleave(Q)
        up = KVCache(L)
        c_last = model.run_blocks(x_ctx[cq], skip, L, c_attn[cq], c_pos[cq], mlp_mask=chunk[crow], cache=up)[:, -1]
        oq = torch.arange(O, device=dev).repeat(M)
        orow = torch.arange(M, device=dev).repeat_interleave(O)
        ctx_row = orow * Q + owner[oq]  # the context row each option row continues
        x = model.run_blocks(x_opt[oq], skip, L, o_attn[oq], o_pos[oq], mlp_mask=chunk[orow],
                             cache=up.rows(ctx_row))
        first = target_logprobs(model, c_last[ctx_row], o_ids[oq, 0])
        sel = later[oq]
        rest = torch.zeros(M * O, W - 1, device=dev)
        rest[sel] = target_logprobs(model, x[:, :-1][sel], o_ids[oq, 1:][sel])
        totals = first + rest.sum(1)
        if mean:
            totals = totals / o_mask[oq].sum(1)
        totals = totals.view(M, O).tolist()
        for m in range(M):
            row, start = [], 0
            for i, k in enumerate(per_q):
                scores = totals[m][start:start + k]
                row.append(list(questions[i].options)[max(range(k), key=scores.__getitem__)])
                start += k
            answers.append(row)
    return answers
