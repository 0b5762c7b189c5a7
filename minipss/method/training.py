"""Training a decoder on documents, with every update confined to chosen value vectors (§5, Table 2).

The vectors are chosen by Eq. 5 over the fine-tuned concepts (`located_scores`, `value_vector_sets`); the
choice is a 0/1 column mask per layer over `down_proj` / `fc_out` (`column_masks`); `ColumnAdamW`
moves only those columns, so frozen columns stay bit-identical (no decay, momentum or other drift reaches
them). The language-model pieces (documents, windows, batch order, schedule, loss) serve both the
fine-tuning command and the synthetic world's pretraining.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..model.padding import right_pad
from .benchmark import Concept, unrelated_sets
from .controls import random_ranking
from .pss import collect_coefficients, locate, ranking, unrelated_mean


# ---------------------------------------------------------------- which value vectors train

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



def value_matrices(model) -> list[torch.nn.Parameter]:
    """The `[d, d_ff]` matrices whose columns are the value vectors, one per layer (the family says
    which matrix that is)."""
    return [linear.weight for linear in model.value_matrices()]


def column_masks(sets: dict[int, list[int]], num_layers: int, d_ff: int, device) -> list[torch.Tensor]:
    masks = []
    for l in range(num_layers):
        m = torch.zeros(d_ff, dtype=torch.bool, device=device)
        m[sets.get(l, [])] = True
        masks.append(m)
    return masks


# ---------------------------------------------------------------- the optimizer


class ColumnAdamW:
    """AdamW whose every effect (moments, decay, step) is confined to the masked columns."""

    def __init__(self, params, masks, lr, betas, eps, weight_decay):
        self.params, self.masks = params, masks
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.m = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.v = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, mask, m, v in zip(self.params, self.masks, self.m, self.v):
            g = torch.where(mask, p.grad.float(), 0.0)  # moments only ever see the chosen columns
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            update = (m / (1 - b1 ** self.t)) / ((v / (1 - b2 ** self.t)).sqrt() + self.eps)
            new = p.float() * (1 - lr * self.wd) - lr * update
            p.copy_(torch.where(mask, new.to(p.dtype), p))

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"m.{i}": m for i, m in enumerate(self.m)}
        out.update({f"v.{i}": v for i, v in enumerate(self.v)})
        return out

    def load(self, state: dict[str, torch.Tensor], t: int) -> None:
        for i in range(len(self.m)):
            self.m[i].copy_(state[f"m.{i}"])
            self.v[i].copy_(state[f"v.{i}"])
        self.t = t


def learning_rate(step: int, peak: float, warmup: int, steps: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 10% of `peak` at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))


# ---------------------------------------------------------------- data


def read_documents(path) -> list[str]:
    """A JSONL file of {"text": ...} (one per line), or plain text split on blank lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training data not found")
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str) or not doc["text"].strip():
                raise ValueError(f"{path}:{n}: needs a non-empty string field 'text'")
            docs.append(doc["text"])
    else:
        docs = [p.strip() for p in raw.split("\n\n") if p.strip()]
    if not docs:
        raise ValueError(f"{path}: no documents")
    return docs


def windows(tok, docs: list[str], seq_len: int) -> list[list[int]]:
    """Each document's tokens (BOS first, as the model expects) cut into windows of at most seq_len."""
    out = []
    for d in docs:
        ids = tok.encode(d)
        out += [ids[i:i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i:i + seq_len]) > 1]
    return out


def batch_order(n: int, batch_size: int, batches: int, seed: int) -> list[list[int]]:
    """Seeded shuffles, epoch after epoch, cut into batches: the same seed gives the same order."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < batches * batch_size:
        order += torch.randperm(n, generator=g).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(batches)]


def lm_loss(model, seqs: list[list[int]], device) -> torch.Tensor:
    """Next-token cross-entropy over right-padded sequences (padding ignored)."""
    ids, mask = right_pad(seqs, 0, device)
    logits = model(ids, attention_mask=mask).logits[:, :-1].float()
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100)
