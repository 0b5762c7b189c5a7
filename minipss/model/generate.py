"""Batched decoding with a KV cache; the value-vector mask applies at every step.

`decode` is the one decoding loop: `generate` feeds it left-padded prompts, the many-mask engine
(`method.many_masks`) prompts it ran with shared work. Greedy by default (the paper's MCQ and open-ended
protocols, Appendix B.1); sampling with a temperature and a seeded `torch.Generator` for semantic entropy
(§5.2). A row stops at EOS, at `max_new_tokens`, or when `stop_when(tokens)` says its answer is decided;
finished rows leave the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .fastest import ROWS, bf16_faster
from .layers import KVCache
from .padding import left_pad


class GreedyHead:
    """Greedy next tokens from final residual states `x` `[N, d]`: `model.head(x).argmax(-1)`, the same
    tokens up to fp32 summation order, as any change of batch (METHOD.md §5). With `screen`, the
    full-vocabulary product first runs in bf16, only to screen: a token is a candidate when its bf16 logit
    lies within twice the proven error bound of the best one, and the argmax is taken over the candidates'
    fp32 logits (usually a handful). Screening needs fp32 weights on a CPU, no head bias and no final
    softcap (CUDA may sum bf16 products in reduced precision, which the bound does not cover, so there the
    full product runs). `screen=None` screens when that holds and a bf16 product of the head's shape is
    measured faster than fp32 on this device (METHOD.md §10; a CPU without bf16 units runs it slower);
    True insists (ValueError where not possible), False never screens; `.screen` says which. Built once
    per decoding run: it keeps a bf16 copy of the output matrix, so the weights must not change while it
    is in use."""

    @torch.no_grad()
    def __init__(self, model, screen: bool | None = None):
        self.model = model
        out = model.get_submodule(model.head_path)
        self.weight = out.weight
        eligible = (out.weight.dtype == torch.float32 and out.weight.device.type == "cpu" and out.bias is None
                    and model.config.final_softcap is None)
        if screen and not eligible:
            raise ValueError("GreedyHead(screen=True) needs fp32 output weights on a CPU, without bias or "
                             "final softcap")
        if screen is None:
            vocab, d = out.weight.shape
            screen = eligible and bf16_faster(out.weight.device, (ROWS, d, vocab))
        self.screen = bool(screen)
        if self.screen:
            self.weight16 = out.weight.to(torch.bfloat16)
            self.norm = float(out.weight.norm(dim=1).max())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.screen:
            return self.model.head(x).argmax(-1)
        h = self.model.final_norm(x)
        rough = torch.nn.functional.linear(h.to(torch.bfloat16), self.weight16)  # [N, vocab]
        # |rough_v - exact_v| <= (2^-8 (h and w rounded) + 2^-9 (the sum rounded) + d 2^-23 (the fp32 sums
        # of d products, here and in the exact product)) |h| |w_v|, below `err` with slack
        err = (2.0 ** -7 + h.shape[-1] * 2.0 ** -22) * h.norm(dim=-1) * self.norm
        # the best token v has rough_v + err >= exact_v >= exact_u >= rough_u - err for every u
        candidate = rough >= (rough.max(-1).values.float() - 2 * err)[:, None]
        vocab = candidate.any(0).nonzero().squeeze(1)  # ascending: ties go to the lowest id, as in argmax
        exact = torch.nn.functional.linear(h, self.weight[vocab]).masked_fill(~candidate[:, vocab], float("-inf"))
        return vocab[exact.argmax(-1)]


@torch.inference_mode()
def decode(model, last: torch.Tensor, cache: KVCache, attention: torch.Tensor, positions: torch.Tensor,
           max_new_tokens: int, next_token: Callable, eos_ids: Sequence[int] = (), mlp_mask=None,
           stop_when: Callable[[list[int]], bool] | None = None, rows_done: Callable[[int], None] = lambda n: None):
    """The decoding loop, for prompts already run into `cache`: `last` `[B, d]` holds each row's final residual
    state at its last prompt token, `attention` `[B, n]` the cached slots (each row's last token in the last
    slot), `positions` `[B, 1]` each row's first new position. `next_token(states)` gives a token per row, or
    `(tokens, their log-probs)`. A row keeps every token but EOS and leaves the batch (with its cache rows and
    mask) at EOS, once `stop_when(its tokens)`, or after `max_new_tokens`; `rows_done(n)` hears as n rows
    leave. `mlp_mask`: `[L, d_ff]` or `[B, L, d_ff]`. Returns each row's tokens and log-probs (if given)."""
    per_row = mlp_mask is not None and mlp_mask.dim() == 3
    rows = torch.arange(len(last), device=last.device)  # which rows are still in the batch
    out, logps = [[] for _ in rows], [[] for _ in rows]
    eos = torch.tensor(list(eos_ids) or [-1], device=last.device)
    for step in range(max_new_tokens):
        nxt = next_token(last)
        nxt, logp = nxt if isinstance(nxt, tuple) else (nxt, None)
        finished, logp = torch.isin(nxt, eos).tolist(), [] if logp is None else logp.tolist()
        for j, (r, t) in enumerate(zip(rows.tolist(), nxt.tolist())):
            if not finished[j]:
                out[r].append(t)
                logps[r] += logp[j:j + 1]  # nothing without log-probs
                finished[j] = stop_when is not None and bool(stop_when(out[r]))
        keep = ~torch.tensor(finished, device=last.device)
        if step == max_new_tokens - 1 or not keep.any():
            break
        if not keep.all():
            rows_done(len(finished) - int(keep.sum()))
            rows, nxt, attention, positions = rows[keep], nxt[keep], attention[keep], positions[keep]
            if per_row:  # the finished rows' masks leave with them, as their cache rows do
                mlp_mask = mlp_mask[keep]
            cache = cache.rows(keep)
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        last = model.run_blocks(model.embed(nxt[:, None], positions), 0, None, attention, positions,
                                mlp_mask, cache)[:, -1]
        positions = positions + 1
    rows_done(len(rows))  # the rows still in the batch at its end
    return out, logps


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Sequence[int] = (),
             pad_id: int = 0, mlp_mask: torch.Tensor | None = None, temperature: float = 0.0,
             generator: torch.Generator | None = None, stop_when: Callable[[list[int]], bool] | None = None,
             return_logprobs: bool = False, next_token: Callable | None = None):
    """New tokens per prompt (EOS excluded); with `return_logprobs`, also the log-prob of each.

    `mlp_mask` is `[L, d_ff]` (every row) or `[B, L, d_ff]` (one mask per row). The prompts run left-padded,
    then `decode` continues them, taking the argmax of the logits `model(...)` gives (at `temperature` > 0 a
    sample drawn with `generator`), or what `next_token` picks. Not `GreedyHead` by default: its argmax is the
    same only up to fp32 summation order (screening sums a few rows apart, a head bias adds in another
    order), so a near tie could go the other way; the many-mask engine passes it, tested equal."""
    if mlp_mask is not None and mlp_mask.dim() == 3 and mlp_mask.shape[0] == 1:
        mlp_mask = mlp_mask[0]  # one mask for every row
    ids, attention, positions = left_pad(prompts, pad_id, model.device)
    cache = KVCache(model.config.num_layers)

    def sample_or_argmax(x):
        logits = model.head(x[:, None])[:, 0].float()  # on [B, 1, d] as in `model(...)`: the same bits
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        return (nxt, torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None]).squeeze(1)) if return_logprobs else nxt

    last = model.run_blocks(model.embed(ids, positions), 0, None, attention, positions, mlp_mask, cache)[:, -1]
    out, logps = decode(model, last, cache, attention, positions[:, -1:] + 1, max_new_tokens,
                        next_token or sample_or_argmax, eos_ids, mlp_mask, stop_when)
    return (out, logps) if return_logprobs else out
