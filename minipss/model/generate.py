"""Batched decoding with a KV cache on left-padded prompts; the value-vector mask applies at every step.

Greedy by default (the paper's MCQ and open-ended protocols, Appendix B.1); sampling with a temperature
and a seeded `torch.Generator` for semantic entropy (§5.2). A row stops at EOS, at `max_new_tokens`, or
when `stop_when(tokens)` says its answer is decided; finished rows leave the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .layers import KVCache
from .padding import left_pad


class GreedyHead:
    """Greedy next tokens from final residual states `x` `[N, d]`: `model.head(x).argmax(-1)`, the same
    tokens up to fp32 summation order, as any change of batch (METHOD.md §5). With fp32 weights on a CPU
    the full-vocabulary product first runs in bf16, about three times cheaper, only to screen: a token is
    a candidate when its bf16 logit lies within twice the proven error bound of the best one, and the
    argmax is taken over the candidates' fp32 logits (usually a handful). (CUDA may sum bf16 products in
    reduced precision, so there the full product runs.) `screen`: None decides as above, True screens
    (ValueError unless the head is eligible: fp32 weights, no bias, no final softcap), False never does.
    Built once per decoding run: it keeps a bf16 copy of the output matrix, so the weights must not change
    while it is in use."""

    @torch.no_grad()
    def __init__(self, model, screen: bool | None = None):
        self.model = model
        out = model.get_submodule(model.head_path)
        self.weight = out.weight
        eligible = out.weight.dtype == torch.float32 and out.bias is None and model.config.final_softcap is None
        if screen and not eligible:
            raise ValueError("screening the greedy head needs fp32 weights, no head bias and no final softcap")
        self.screen = eligible and out.weight.device.type == "cpu" if screen is None else screen
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
def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Sequence[int] = (),
             pad_id: int = 0, mlp_mask: torch.Tensor | None = None, temperature: float = 0.0,
             generator: torch.Generator | None = None,
             stop_when: Callable[[list[int]], bool] | None = None, return_logprobs: bool = False):
    """New tokens per prompt (EOS excluded); with `return_logprobs`, also the log-prob of each.

    `mlp_mask` is `[L, d_ff]` (every row) or `[B, L, d_ff]` (one mask per row)."""
    device = model.device
    if mlp_mask is not None and mlp_mask.dim() == 3 and mlp_mask.shape[0] == 1:
        mlp_mask = mlp_mask[0]  # one mask for every row
    ids, attn, pos = left_pad(prompts, pad_id, device)
    B = len(prompts)
    rows = torch.arange(B, device=device)  # which original rows are still in the batch
    per_row = mlp_mask is not None and mlp_mask.dim() == 3
    out = [[] for _ in range(B)]
    logps = [[] for _ in range(B)]
    cache = KVCache(model.config.num_layers)
    eos = torch.tensor(list(eos_ids) or [-1], device=device)
    step_input = ids
    for _ in range(max_new_tokens):
        mask = mlp_mask[rows] if per_row else mlp_mask
        logits = model(step_input, attention_mask=attn, position_ids=pos, mlp_mask=mask, cache=cache,
                       logits_to_keep=1).logits[:, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        finished = torch.isin(nxt, eos)
        nxt_list, lp_list = nxt.tolist(), logprobs.gather(1, nxt[:, None]).squeeze(1).tolist()
        for j, r in enumerate(rows.tolist()):
            if not finished[j]:
                out[r].append(nxt_list[j])
                logps[r].append(lp_list[j])
                if stop_when is not None and stop_when(out[r]):
                    finished[j] = True
        keep = ~finished
        if not keep.any():
            break
        if not keep.all():
            rows, nxt, attn, pos = rows[keep], nxt[keep], attn[keep], pos[keep]
            cache = cache.rows(keep)
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        step_input = nxt[:, None]
    return (out, logps) if return_logprobs else out
