"""The usual way, as a speed and answer reference for `minipss perf`: Hugging Face transformers with the
value-vector mask applied at the input of every layer's value matrix (`down_proj`, `fc_out`, ...), one
concept mask at a time (what a forward pre-hook does; here a thin wrapper module, so no hook is registered
anywhere); the coefficients are that input, recorded.

`python -m minipss.perf.hf_reference --model M --bench B --out F.json --mode MODE ...` is the whole `minipss pss` job
done this way as one process (coefficients, baseline, every masked cell one mask at a time), writing each
cell's per-question correctness and answers, so that `minipss perf --end-to-end` can time both jobs as
processes and compare what they found. Needs the optional `transformers` package; the core never imports
this module.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..method.benchmark import load_benchmark, questions_of, unrelated_sets
from ..method.controls import KINDS, ConceptStats, cell_masks
from ..method.prompts import coefficient_prompt, letter_in, mcq_prompt
from ..method.pss import (GENERATE_TOKENS, answer_of, cloze_tokens, concept_means, letter_scores, letter_vocab,
                          token_weights)
from ..model.decoder import Coefficients
from ..model.families import read_config, value_matrix_slots
from ..model.fastest import resolve_dtype
from ..model.padding import left_pad
from ..model.tokenizer import load_tokenizer
from ..run.report import cell_key
from ..run.settings import PAPER_RATIOS, Settings, pss_arguments, settings_from


class MaskedInput(torch.nn.Module):
    """Multiplies its input by `self.mask` and adds `self.shift` (when set: mean-ablation), hands it to
    `self.record` (a `Coefficients` collector shared by every layer, when collecting coefficients, §3.2),
    then runs the wrapped projection."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.mask, self.shift, self.record = inner, None, None, None

    def forward(self, x):
        if self.mask is not None:
            x = x * self.mask if self.shift is None else x * self.mask + self.shift
        if self.record is not None:
            self.record.append(x)
        return self.inner(x)


def load_reference(path, dtype, device):
    try:
        import transformers
    except ImportError:
        raise ModuleNotFoundError('the reference needs transformers: pip install "minipss[test]"') from None
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    wrappers = []  # transformers names its modules as the checkpoint does: our family says where
    for owner, name in value_matrix_slots(model, model.config.model_type):
        w = MaskedInput(getattr(owner, name))
        setattr(owner, name, w)
        wrappers.append(w)
    model.mask_wrappers = wrappers
    return model


def set_mask(model, mask: torch.Tensor | None) -> None:
    """One concept's mask `[L, d_ff]` (or `[L, 2 * d_ff]`: multiplier, then value added) for every
    following forward pass."""
    for i, w in enumerate(model.mask_wrappers):
        d_ff = w.inner.in_features
        w.mask = None if mask is None else mask[i, :d_ff]
        w.shift = None if mask is None or mask.shape[-1] == d_ff else mask[i, d_ff:]


@torch.inference_mode()
def coefficients(model, tok, concepts, token_rule: str = "content", batch_size: int = 32,
                 absolute: bool = True) -> torch.Tensor:
    """Per concept, the mean over its questions of the mean |m| over each `Question: ... Answer: ...`
    text's tokens, `[C, L, d_ff]`, read at the value matrices' input (as `method.collect_coefficients`)."""
    texts = [coefficient_prompt(q) for c in concepts for q in c.mcq]
    dev = next(model.parameters()).device
    per_q = []
    for start in range(0, len(texts), batch_size):
        ids, attn, pos = left_pad([tok.encode(t) for t in texts[start:start + batch_size]], tok.pad_id, dev)
        collected = Coefficients(pool=token_weights(ids, attn, tok.special_ids, token_rule), absolute=absolute)
        for w in model.mask_wrappers:  # layer by layer, in order: one pooled [B, d_ff] per layer
            w.record = collected
        model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=1)
        per_q.append(torch.stack(collected, 1).cpu())
        for w in model.mask_wrappers:
            w.record = None
    return concept_means(torch.cat(per_q), [len(c.mcq) for c in concepts])


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
                out.append(answer_of(sums[:k]))
                sums = sums[k:]
        return out
    if mode == "logits":
        vocab, owner = letter_vocab(tok)
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        ids, attn, pos = left_pad([tok.encode(mcq_prompt(q)) for q in chunk], tok.pad_id, dev)
        if mode == "logits":
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=1).logits[:, -1]
            out += [answer_of(s) for s in letter_scores(logits[:, vocab.to(dev)], owner)]
        else:
            gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=GENERATE_TOKENS,
                                 do_sample=False, pad_token_id=tok.pad_id, eos_token_id=tok.eos_ids or None)
            out += [letter_in(tok.decode(g[ids.shape[1]:].tolist())) for g in gen]
    return out


UNSUPPORTED = {"matched_control": False, "pseudo_control": False, "split_half": False, "locator": "diff",
               "cloze_mean": False}  # what the reference does not do: these must stay at their defaults


def run_pss(model_dir, bench, out, s: Settings) -> dict:
    """The job of `minipss pss` with settings `s` (same concepts, unrelated sets, located and random masks,
    questions), the usual way; writes `out`: `{"cells": {key: [correct per question]}, "answers": ...,
    "timing": ...}` with the keys of `minipss pss`'s work folder (`baseline|i`, `located|i|r`, `random|i|r`).
    Every generated answer runs to its end (`early_stop` gives the same answers either way)."""
    s.check()
    other = [k for k, default in UNSUPPORTED.items() if getattr(s, k) != default]
    if other:
        raise ValueError(f"the reference job runs the paper's method only; leave out {', '.join(other)}")
    t0 = time.time()
    cs = load_benchmark(bench)[: s.concepts]
    others = unrelated_sets(cs, s.n_unrelated, s.seed, s.unrelated)
    config = read_config(model_dir)
    dtype = getattr(torch, resolve_dtype(s.dtype, s.device, (config.hidden_size, config.intermediate_size))[0])
    model = load_reference(model_dir, dtype, s.device)
    tok = load_tokenizer(model_dir)
    coeffs = coefficients(model, tok, cs, s.token_rule, s.batch_size)
    signed = (coefficients(model, tok, cs, s.token_rule, s.batch_size, absolute=False) if s.ablation == "mean"
              else None)
    timing = {"coefficients": time.time() - t0}
    cells, letters = {}, {}

    def score(key, qs, mask=None):
        set_mask(model, mask)
        letters[key] = answers(model, tok, qs, s.mode, s.batch_size)
        cells[key] = [a == q.answer for a, q in zip(letters[key], qs)]

    t1 = time.time()
    for i, c in enumerate(cs):
        score(cell_key("baseline", i), c.mcq)
    timing["baseline"] = time.time() - t1
    t2 = time.time()
    counts = [len(c.mcq) for c in cs]
    kinds = KINDS[:2] if s.control else KINDS[:1]  # located, random
    for i in range(len(cs)):
        mine = [(kind, r) for r in s.ratios for kind in kinds]
        masks, _ = cell_masks(i, mine, ConceptStats.whole(coeffs, counts), others[i], s.skip_layers, s.seed,
                              signed=signed)
        for (kind, r), mask in zip(mine, masks.to(device=s.device, dtype=dtype)):
            score(cell_key(kind, i, r), questions_of(cs, i, others[i]), mask)
    timing["masked"] = time.time() - t2
    timing["total"] = time.time() - t0
    Path(out).write_text(json.dumps({"cells": cells, "answers": letters, "timing": timing}))
    return {"cells": cells, "answers": letters, "timing": timing}


def main(argv=None) -> None:
    """The options of `minipss pss` (`settings.pss_arguments`), run the usual way."""
    p = argparse.ArgumentParser(prog="python -m minipss.perf.hf_reference", description=run_pss.__doc__)
    pss_arguments(p, ",".join(map(str, PAPER_RATIOS)))
    p.add_argument("--control", action="store_true", help="also mask random vectors (same count per layer)")
    a = p.parse_args(argv)
    run_pss(a.model, a.bench, a.out, settings_from(a, a.control))


if __name__ == "__main__":
    main()
