"""Scoring multiple-choice and open questions under a value-vector mask (METHOD.md §5).

Three MCQ modes: `generate` (the paper's: 3-shot prompt, greedy up to 30 tokens, first standalone
letter), `logits` (argmax over the letter tokens at the first generated position) and `cloze` (the
option with the highest summed log-prob after `Question: ...\\nAnswer:`). Every function takes the mask
as `None`, one `[L, d_ff]` mask for all questions, or `[N, L, d_ff]`, one per question, so one batch can
mix concepts and ratios.
"""

from __future__ import annotations

import torch

from ..model.generate import generate
from ..model.layers import KVCache
from ..model.padding import left_pad, right_pad
from .benchmark import MCQ
from .prompts import cloze_context, letter_decided, letter_in, mcq_prompt, open_correct, open_prompt

MODES = ("generate", "logits", "cloze")
GENERATE_TOKENS = 30
OPEN_TOKENS = 150


def _rows(mlp_mask, idx):
    """The masks of these questions: a shared `[L, d_ff]` (or `[1, L, d_ff]`) mask serves every row."""
    return mlp_mask if mlp_mask is None or mlp_mask.dim() == 2 or mlp_mask.shape[0] == 1 else mlp_mask[idx]


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def letter_vocab(tok) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids of every single-token spelling of the letters (` X` and `X`) and, per id, the index of its
    letter in `ABCD`: the only logits `logits` mode reads."""
    ids, owner = [], []
    for i, letter in enumerate("ABCD"):
        spellings = {tuple(tok.encode(s, bos=False)) for s in (f" {letter}", letter)}
        single = sorted(t[0] for t in spellings if len(t) == 1)
        if not single:
            raise ValueError(f"the tokenizer has no single token for {letter!r}; use --mode cloze or generate")
        ids += single
        owner += [i] * len(single)
    return torch.tensor(ids), torch.tensor(owner)


def best_letters(letter_logits: torch.Tensor, owner: torch.Tensor) -> list[str]:
    """Per row of logits over `letter_vocab`'s ids `[N, V]`, the letter whose best spelling scores highest
    (ties: the earlier letter)."""
    N = letter_logits.shape[0]
    best = torch.full((N, 4), float("-inf"), device=letter_logits.device).scatter_reduce(
        1, owner.to(letter_logits.device).expand(N, -1), letter_logits.float(), reduce="amax")
    return ["ABCD"[b] for b in best.argmax(-1).tolist()]


def best_option(question: MCQ, scores: list[float]) -> str:
    """The letter of the option with the highest score (ties: the earlier option)."""
    return list(question.options)[max(range(len(scores)), key=scores.__getitem__)]


@torch.inference_mode()
def mcq_answers(model, tok, questions: list[MCQ], mode: str = "generate", mlp_mask=None,
                batch_size: int = 32, early_stop: bool = True, cloze_mean: bool = False) -> list[str | None]:
    """The model's answer letter (or None) for each question under `mlp_mask`, one batch at a time: the
    plain form of each mode, which `many_masks` must equal."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    answers: list[str | None] = []
    if mode == "logits":
        vocab, owner = letter_vocab(tok)
    for idx in _batches(len(questions), batch_size):
        rows_mask = _rows(mlp_mask, idx)
        if mode == "cloze":
            ctx, opts = zip(*(cloze_tokens(tok, questions[i]) for i in idx))
            scores = cloze_scores(model, list(ctx), list(opts), rows_mask, cloze_mean)
            answers += [best_option(questions[i], s) for i, s in zip(idx, scores)]
            continue
        prompts = [tok.encode(mcq_prompt(questions[i])) for i in idx]
        if mode == "logits":
            ids, attn, pos = left_pad(prompts, tok.pad_id, model.device)
            logits = model(ids, attention_mask=attn, position_ids=pos, mlp_mask=rows_mask, logits_to_keep=1).logits[:, -1]
            answers += best_letters(logits[:, vocab.to(logits.device)], owner)
        else:
            stop = (lambda ids: letter_decided(tok.decode(ids))) if early_stop else None
            outs = generate(model, prompts, GENERATE_TOKENS, tok.eos_ids, tok.pad_id, mlp_mask=rows_mask, stop_when=stop)
            answers += [letter_in(tok.decode(o)) for o in outs]
    return answers


def cloze_tokens(tok, q: MCQ) -> tuple[list[int], list[list[int]]]:
    """Context ids and each option's ids: the tokens of `context + " " + option` after the context's own
    tokens, which must be their prefix."""
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


def option_scores(model, context_last: torch.Tensor, option_states: torch.Tensor, option_ids: torch.Tensor,
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
    flat = [opt for opts in options for opt in opts]
    opt_ids, opt_mask = right_pad(flat, 0, device)
    width = opt_ids.shape[1]
    cache = cache.rows(owner)
    opt_pos = pos[owner, -1:] + 1 + torch.arange(width, device=device)
    option_rows_mask = _rows(mlp_mask, owner)  # each option row under its question's mask
    x = model.run_blocks(model.embed(opt_ids, opt_pos), attention_mask=torch.cat([attn[owner], opt_mask], 1),
                         position_ids=opt_pos, mlp_mask=option_rows_mask, cache=cache)
    totals = option_scores(model, ctx_last[owner], x, opt_ids, opt_mask, mean)
    return [t.tolist() for t in totals.split(per_q)]


@torch.inference_mode()
def open_answers(model, tok, questions: list[dict], mlp_mask=None, batch_size: int = 16,
                 max_new_tokens: int = OPEN_TOKENS, return_texts: bool = False):
    """Zero-shot open questions, greedy; correct when the normalised gold occurs in the generation.
    With `return_texts`, also the generations."""
    correct, texts = [], []
    for idx in _batches(len(questions), batch_size):
        prompts = [tok.encode(open_prompt(questions[i]["question"])) for i in idx]
        rows_mask = _rows(mlp_mask, idx)
        outs = generate(model, prompts, max_new_tokens, tok.eos_ids, tok.pad_id, mlp_mask=rows_mask)
        texts += [tok.decode(o) for o in outs]
        correct += [open_correct(texts[i], questions[i]["answer"]) for i in idx]
    return (correct, texts) if return_texts else correct
