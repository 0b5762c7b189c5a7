"""Hallucination metrics of §5.2 and Appendix C.3: semantic entropy and local intrinsic dimension (LID).

Decisions where the paper is silent are in METHOD.md §8: with no NLI model offline, two answers
mean the same when their normalised forms match or one contains the other; LID is the Levina-Bickel MLE
on the residual stream at the last token, the middle layer by default, against question + gold answer
of the other questions.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from ..method.prompts import normalise, open_prompt
from ..model.generate import generate
from ..model.padding import left_pad


# --- Semantic entropy (§5.2, Appendix C.3) ---------------------------------------------------------

def equivalent(a: str, b: str) -> bool:
    """Normalised forms equal, or one (non-empty) contains the other as whole words (METHOD.md §8)."""
    a, b = normalise(a), normalise(b)
    if a == b:
        return True
    if not a or not b:
        return False
    return f" {a} " in f" {b} " or f" {b} " in f" {a} "


def cluster_answers(answers: list[str]) -> list[int]:
    """A cluster id per answer, greedy in order: an answer joins the first cluster whose representative
    (its first member) is equivalent to it, else opens a new one (METHOD.md §8, our stand-in for NLI)."""
    representatives: list[str] = []
    ids = []
    for answer in answers:
        for c, rep in enumerate(representatives):
            if equivalent(rep, answer):
                ids.append(c)
                break
        else:
            ids.append(len(representatives))
            representatives.append(answer)
    return ids


def entropy(p: torch.Tensor) -> float:
    """Entropy in nats of a distribution (zeros contribute nothing)."""
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def semantic_entropy(answers: list[str], logprobs: list[float] | None = None) -> dict:
    """Entropy over meaning clusters (§5.2): `discrete` from cluster frequencies; `weighted` from each
    cluster's summed exp(length-normalised sequence log-prob), normalised (None without `logprobs`).

    `logprobs` are per answer, already length-normalised (mean token log-prob, as `sample_answers`
    returns)."""
    ids = cluster_answers(answers)
    n_clusters = max(ids) + 1 if ids else 0
    counts = Counter(ids)
    freq = torch.tensor([counts[c] for c in range(n_clusters)], dtype=torch.float64)
    out = {"discrete": entropy(freq / freq.sum()) if n_clusters else 0.0, "weighted": None,
           "clusters": ids}
    if logprobs is not None:
        if len(logprobs) != len(answers):
            raise ValueError(f"{len(logprobs)} log-probs for {len(answers)} answers")
        mass = torch.zeros(n_clusters, dtype=torch.float64)
        for c, lp in zip(ids, logprobs):
            mass[c] += math.exp(lp)
        out["weighted"] = entropy(mass / mass.sum()) if n_clusters else 0.0
    return out


def newline_cut(tok, tokens: list[int]) -> tuple[str, int]:
    """The answer text up to the first newline (stripped) and how many tokens produced it: those
    through the token that brought the newline, which acts as the stop (all tokens if none)."""
    for i in range(len(tokens)):
        text = tok.decode(tokens[: i + 1])
        if "\n" in text:
            return text.split("\n", 1)[0].strip(), i + 1
    return tok.decode(tokens).strip(), len(tokens)


def sample_answers(model, tok, question: str, n: int = 10, temperature: float = 1.0,
                   max_new_tokens: int = 50, seed: int = 0,
                   mlp_mask: torch.Tensor | None = None) -> tuple[list[str], list[float]]:
    """`n` sampled answers to an open question, zero-shot `open_prompt`, each cut at its first newline,
    and the mean token log-prob of each (§5.2; METHOD.md §8: 10 samples, temperature 1.0, 50 tokens).

    Sampling draws from a `torch.Generator` seeded with `seed`, so the same seed gives the same answers.
    The mean covers the tokens through the one that brought the newline; an answer of no tokens at all
    (EOS first, whose log-prob `generate` does not return) gets 0.0."""
    prompt = tok.encode(open_prompt(question))
    generator = torch.Generator(device=model.device).manual_seed(seed)
    tokens, logps = generate(model, [prompt] * n, max_new_tokens, tok.eos_ids, tok.pad_id, mlp_mask=mlp_mask,
                             temperature=temperature, generator=generator,
                             stop_when=lambda t: "\n" in tok.decode(t), return_logprobs=True)
    texts, means = [], []
    for t, lp in zip(tokens, logps):
        text, used = newline_cut(tok, t)
        texts.append(text)
        means.append(sum(lp[:used]) / used if used else 0.0)
    return texts, means


# --- Local intrinsic dimension (Appendix C.3) ------------------------------------------------------

def levina_bickel(points: torch.Tensor, reference: torch.Tensor, k: int = 20) -> torch.Tensor:
    """Levina-Bickel MLE of the local intrinsic dimension of each point, `[N]` (Appendix C.3, METHOD.md §8):
    `LID = -1 / mean_{j<k} log(d_j / d_k)`, d_1 <= ... <= d_k the distances to its k nearest reference
    points. A reference point at distance exactly 0 (the point itself) is not a neighbour."""
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if reference.shape[0] < k:
        raise ValueError(f"{reference.shape[0]} reference points, need at least k = {k}")
    d = torch.cdist(points.double(), reference.double())
    d = d.masked_fill(d == 0, math.inf)
    nearest = d.topk(k, dim=1, largest=False).values  # ascending
    if torch.isinf(nearest).any():
        raise ValueError(f"fewer than k = {k} reference points at non-zero distance from some point")
    return -1.0 / (nearest[:, :-1] / nearest[:, -1:]).log().mean(1)


@torch.inference_mode()
def hidden_at_last_token(model, tok, texts: list[str], layer: int | None = None,
                         batch_size: int = 32) -> torch.Tensor:
    """The residual stream after block `layer` (default the middle one, L // 2) at each text's last
    token, `[N, D]` in fp32 (Appendix C.3, METHOD.md §8). Batched with left padding and explicit positions,
    so the last token sits at the last column of every row."""
    n_layers = model.config.num_layers
    layer = n_layers // 2 if layer is None else layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range for a model of {n_layers} layers")
    out = []
    for start in range(0, len(texts), batch_size):
        seqs = [tok.encode(t) for t in texts[start:start + batch_size]]
        ids, attn, pos = left_pad(seqs, tok.pad_id, model.device)
        x = model.run_blocks(model.embed(ids, pos), 0, layer + 1, attention_mask=attn, position_ids=pos)
        out.append(x[:, -1].float().cpu())
    return torch.cat(out)


def lid_for_questions(model, tok, questions: list[dict], answers: list[str], layer: int | None = None,
                      k: int = 20) -> list[float]:
    """Per question i, the LID of `open_prompt(q_i) + " " + answers[i]` against the reference
    `open_prompt(q_j) + " " + gold_j` for all j != i (Appendix C.3, METHOD.md §8); lower reads as more
    truthful. `questions` are `{"question", "answer"}` dicts. With fewer than k other questions, k is
    clipped to their number (M - 1); that needs at least 3 questions."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    others = len(questions) - 1
    k = min(k, others)
    if k < 2:
        raise ValueError(f"LID needs at least 3 questions, got {len(questions)}")
    prompts = [open_prompt(q["question"]) for q in questions]
    points = hidden_at_last_token(model, tok, [p + " " + a for p, a in zip(prompts, answers)], layer)
    golds = [p + " " + q["answer"] for p, q in zip(prompts, questions)]
    gold = hidden_at_last_token(model, tok, golds, layer)
    lids = []
    for i in range(len(questions)):
        reference = torch.cat([gold[:i], gold[i + 1:]])
        lids.append(float(levina_bickel(points[i:i + 1], reference, k)[0]))
    return lids
