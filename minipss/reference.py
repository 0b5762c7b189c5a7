"""The usual way, as a speed and answer reference for `minipss perf`: Hugging Face transformers with the
value-vector mask applied at the input of every layer's value matrix (`down_proj`, `fc_out`, ...), one concept mask at a time
(what a forward pre-hook does; here a thin wrapper module, so no hook is registered anywhere).

Needs the optional `transformers` package; the core never imports this module.
"""

from __future__ import annotations

import torch

from .generate import left_pad
from .models import family_of
from .prompts import letter_in, mcq_prompt
from .scoring import GENERATE_TOKENS, best_letters, cloze_tokens, letter_token_ids


class MaskedInput(torch.nn.Module):
    """Multiplies its input by `self.mask` (when set), then runs the wrapped projection."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.mask = inner, None

    def forward(self, x):
        return self.inner(x if self.mask is None else x * self.mask)


def load_reference(path, dtype, device):
    try:
        import transformers
    except ImportError:
        raise ModuleNotFoundError('the reference needs transformers: pip install "minipss[test]"') from None
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    ours = family_of(model.config.model_type).model  # transformers names its modules as the checkpoint does
    wrappers = []
    for block in model.get_submodule(ours.blocks_path):
        parent, _, name = ours.value_matrix.rpartition(".")
        owner = block.get_submodule(parent) if parent else block
        w = MaskedInput(getattr(owner, name))
        setattr(owner, name, w)
        wrappers.append(w)
    model.mask_wrappers = wrappers
    return model


def set_mask(model, mask: torch.Tensor | None) -> None:
    """One concept's mask `[L, d_ff]` for every following forward pass."""
    for i, w in enumerate(model.mask_wrappers):
        w.mask = None if mask is None else mask[i]


@torch.inference_mode()
def answers(model, tok, questions, mode: str, batch_size: int = 32) -> list[str | None]:
    """The reference's answers under the mask set with `set_mask`."""
    dev = next(model.parameters()).device
    out: list[str | None] = []
    if mode == "cloze":  # every (context + option) as its own sequence, full logits, as eval harnesses do
        for start in range(0, len(questions), max(1, batch_size // 4)):
            chunk = questions[start:start + max(1, batch_size // 4)]
            pairs = [(ctx, o) for q in chunk for ctx, opts in [cloze_tokens(tok, q)] for o in opts]
            ids, attn, pos = left_pad([c + o for c, o in pairs], tok.pad_id, dev)
            logp = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float().log_softmax(-1)
            width = ids.shape[1]
            sums = [sum(logp[r, width - len(o) - 1 + t, tok_id].item() for t, tok_id in enumerate(o))
                    for r, (_, o) in enumerate(pairs)]
            for q in chunk:
                k = len(q.options)
                mine, sums = sums[:k], sums[k:]
                out.append(list(q.options)[max(range(k), key=mine.__getitem__)])
        return out
    letters = letter_token_ids(tok) if mode == "logits" else None
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        ids, attn, pos = left_pad([tok.encode(mcq_prompt(q)) for q in chunk], tok.pad_id, dev)
        if mode == "logits":
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=1).logits[:, -1]
            out += best_letters(logits, letters)
        else:
            gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=GENERATE_TOKENS,
                                 do_sample=False, pad_token_id=tok.pad_id, eos_token_id=tok.eos_ids or None)
            out += [letter_in(tok.decode(g[ids.shape[1]:].tolist())) for g in gen]
    return out
