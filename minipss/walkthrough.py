# %% [markdown]
# # The paper's method on one concept, step by step
#
# *The Rise of Parameter Specialization for Knowledge Storage in Large Language Models* (NeurIPS 2025),
# §3-§4, on one concept of the bundled benchmark. It uses the model and the paper's steps in
# `minipss/method/pss.py`, the functions `minipss pss` runs; `minipss/METHOD.md` says where each one departs
# from the paper and why.
#
# Open this file as a notebook (cells are separated by `# %%` lines) or run it whole from the repository
# root: `python -m minipss.walkthrough`. It runs on the real Gemma 3 270M when that has been converted
# (`python -m minipss.weights gemma-3-270m`; about 3 minutes of CPU time in fp32), and otherwise on a tiny
# random model made on the spot (seconds): that one knows nothing, so its accuracies are chance and its PSS
# is noise, but every step runs as it does on a real model. Environment variables choose other inputs:
# `MINIPSS_MODEL` (a model folder, or `tiny`), `MINIPSS_BENCH` (benchmark JSONL, default the bundled
# `minispecwiki`), `MINIPSS_OUT` (where the figure goes, default `runs/walkthrough`), `MINIPSS_DTYPE`
# (`float32`, the default, or `auto`: bf16 where it is measured faster, METHOD.md §10), `MINIPSS_CONCEPT`
# (the concept's index in the benchmark, default 0).

# %%
import os
import time
from pathlib import Path

import torch

import minipss
from minipss.method import pss
from minipss.method.benchmark import load_benchmark, questions_of, unrelated_sets
from minipss.method.prompts import cloze_context, coefficient_prompt
from minipss.model import tiny
from minipss.model.families import read_config
from minipss.model.fastest import resolve_dtype

REAL = Path("weights/gemma-3-270m")
MODEL = os.environ.get("MINIPSS_MODEL") or (str(REAL) if (REAL / "config.json").is_file() else "tiny")
BENCH = Path(os.environ.get("MINIPSS_BENCH", minipss.benchmark_path("minispecwiki")))
OUT_DIR = Path(os.environ.get("MINIPSS_OUT", "runs/walkthrough"))
DTYPE = os.environ.get("MINIPSS_DTYPE", "float32")

CONCEPT = int(os.environ.get("MINIPSS_CONCEPT", "0"))  # index in the benchmark (bundled: The Lord of the Rings)
RATIOS = (0.01, 0.1)  # share of value vectors masked per layer (the paper sweeps 0.1-0.5)
SKIP = 5  # layers 0-4 are never masked (§4.1)
SEED = 0  # draws the unrelated concepts (METHOD.md §2)
MODE = "cloze"  # the fastest scoring mode on a CPU (METHOD.md §5)
N_UNRELATED = 5  # concepts whose questions form t* (§4.1)
started = time.perf_counter()

# %% [markdown]
# ## 1. Model, tokenizer and value vectors (§3.1, Eq. 1-2)
#
# An MLP writes `M = Σ_j m_j v_j` into the residual stream: the coefficients m enter the layer's value
# matrix, whose columns v_j are the value vectors. `model(ids, mlp_mask=...)` multiplies m by a mask, and
# `return_coefficients=True` returns the m that entered (METHOD.md §1).

# %%
if MODEL == "tiny":  # 8 layers (5 never masked), 256 value vectors each, random weights
    MODEL_DIR = tiny.make_tiny_model(OUT_DIR / "tiny-model", layers=8, d_ff=256)
    print(f"no converted model: a tiny random model made on the spot ({MODEL_DIR}). It has no knowledge: its "
          "accuracies are chance and its PSS is noise; every step runs as on a real model.")
else:
    MODEL_DIR = Path(MODEL)
config = read_config(MODEL_DIR)
dtype, why = resolve_dtype(DTYPE, "cpu", (config.hidden_size, config.intermediate_size))
model = minipss.load_model(MODEL_DIR, dtype=getattr(torch, dtype))
tok = minipss.load_tokenizer(MODEL_DIR)
L, d_ff = config.num_layers, config.intermediate_size
print(f"{MODEL_DIR}: {config.model_type}, {L} layers, {d_ff} value vectors per layer "
      f"(columns of {model.value_matrix}), {dtype} ({why})")

# %% [markdown]
# ## 2. The benchmark, the concept and its unrelated concepts (§3.4, §4.1)
#
# Each concept has multiple-choice questions t; its unrelated questions t* are those of 5 other concepts
# drawn with a seeded generator (`unrelated_sets`, METHOD.md §2). The same t and t* serve to locate and to
# score.

# %%
concepts = load_benchmark(BENCH)
others = unrelated_sets(concepts, N_UNRELATED, SEED)[CONCEPT]
concept = concepts[CONCEPT]
questions = questions_of(concepts, CONCEPT, others)  # t, then t*
n_own = len(concept.mcq)
print(f"concept: {concept.name} ({concept.tier} tier), {n_own} questions")
print(f"unrelated: {', '.join(concepts[j].name for j in others)} ({len(questions) - n_own} questions)")
first = concept.mcq[0]
print(f"e.g. {first.question} {first.options} answer {first.answer}")

# %% [markdown]
# ## 3. The coefficients of one question (§3.2, Appendix B.1)
#
# A question is read as `Question: {question} Answer: {correct option}`. One forward pass with
# `return_coefficients=True` hands back m at every layer and token; the question's coefficient vector is the
# mean |m| over its tokens, special tokens such as BOS left out (METHOD.md §3). `pss.question_coefficients`
# does the same for a list of texts, in batches.

# %%
text = coefficient_prompt(first)
ids = torch.tensor([tok.encode(text)])
out = model(ids, return_coefficients=True)
print(f"{text!r}: {ids.shape[1]} tokens; m per layer {tuple(out.coefficients[0].shape)}")
content = ~torch.isin(ids[0], torch.tensor(sorted(tok.special_ids)))  # every token but BOS and the like
by_hand = torch.stack([m[0, content].abs().float().mean(0) for m in out.coefficients])  # [L, d_ff]
assert torch.allclose(by_hand, pss.question_coefficients(model, tok, [text])[0], rtol=1e-3, atol=1e-5)

# %% [markdown]
# ## 4. m and m* (§3.2)
#
# m is the mean over the concept's questions, m* the mean over its unrelated questions. `minipss pss` reads
# every concept of the benchmark; locating this concept needs only its own questions and those of its
# unrelated concepts, so only they are read here.

# %%
needed = [CONCEPT, *others]
counts = [len(concepts[j].mcq) for j in needed]
per_question = pss.question_coefficients(model, tok, [coefficient_prompt(q) for j in needed for q in concepts[j].mcq])
means = pss.concept_means(per_question, counts)  # [concepts, L, d_ff]: this one, then its unrelated ones
m = means[0]
m_star = pss.unrelated_mean(means, counts, list(range(1, len(needed))))  # weighted by their question counts
print(f"per-question |m|: {tuple(per_question.shape)}; m and m*: {tuple(m.shape)}")

# %% [markdown]
# ## 5. Locating: S = |m − m*| (Eq. 5)
#
# The score of value vector j in layer l is `|m_j − m*_j|`; the highest-scoring ones are the concept's
# located vectors. One layer up close:

# %%
S = (m - m_star).abs()  # Eq. 5, [L, d_ff]
order = pss.ranking(S)  # per layer, highest score first (ties: lower index)
LAYER = (SKIP + L) // 2
print(f"layer {LAYER}: S max {S[LAYER].max():.4f}, median {S[LAYER].median():.4f}")
print("  unit        m       m*        S")
for j in order[LAYER, :5].tolist():
    print(f"  {j:4d} {m[LAYER, j]:8.4f} {m_star[LAYER, j]:8.4f} {S[LAYER, j]:8.4f}")

# %% [markdown]
# ## 6. The mask (Eq. 4, §4.1)
#
# Ratio r masks the top `round(r · d_ff)` of every layer l ≥ 5; the first five layers are never touched
# (METHOD.md §4). Masking sets those m_j to 0 at every position: the mask is 1 everywhere but there. Passed
# as `mlp_mask`, it zeroes them in the forward pass, as the returned coefficients show.

# %%
masks = {r: pss.mask_for(order, r, SKIP) for r in RATIOS}  # [L, d_ff] each
for r, mask in masks.items():
    k = pss.top_k(d_ff, r)
    print(f"ratio {r}: top {k} of {d_ff} per layer in layers {SKIP}-{L - 1}; layer {LAYER}, best first: "
          f"{order[LAYER, :min(k, 10)].tolist()}{' ...' if k > 10 else ''}")
masked = model(ids, mlp_mask=masks[RATIOS[-1]].to(model.dtype), return_coefficients=True).coefficients
gone = order[LAYER, :pss.top_k(d_ff, RATIOS[-1])]
print(f"layer {LAYER}, masked units: |m| {masked[LAYER][0][:, gone].abs().max():.1f} with the mask, "
      f"{out.coefficients[LAYER][0][:, gone].abs().max():.4f} without")
assert (masked[LAYER][0][:, gone] == 0).all() and all((mask[:SKIP] == 1).all() for mask in masks.values())

# %% [markdown]
# ## 7. Accuracy before masking (Appendix B.1, C.1)
#
# The paper asks with a 3-shot lettered prompt and reads the generated letter (`generate` mode). Small
# models often cannot answer in that format, and generating is the slowest mode, so this walkthrough uses
# `cloze`, the fastest of the three on a CPU: each option scored by the summed log-probability of its tokens
# after `Question: {question}\nAnswer:`, the highest wins (METHOD.md §5). `minipss pss --mode generate` runs
# the paper's. Concept accuracy is on t, General accuracy on t*.

# %%
t0 = time.perf_counter()
print(f"cloze context: {cloze_context(first.question)!r}")
print(f"option scores of the first question: {[round(s, 2) for s in pss.mcq_scores(model, tok, [first], MODE)[0]]}")
before = [a == q.answer for a, q in zip(pss.mcq_answers(model, tok, questions, MODE), questions)]
concept_before, general_before = pss.concept_and_general(before, n_own)
print(f"Concept_before {concept_before:.3f}   General_before {general_before:.3f}   "
      f"({time.perf_counter() - t0:.1f}s)")

# %% [markdown]
# ## 8. Accuracy after masking (§3.3)
#
# The same questions under each mask, one mask at a time (`minipss pss` scores many masks at once with
# `many_masks`, which gives these answers, tested).

# %%
t0 = time.perf_counter()
after = {}
for r, mask in masks.items():
    correct = [a == q.answer for a, q in zip(pss.mcq_answers(model, tok, questions, MODE, mask.to(model.dtype)),
                                             questions)]
    after[r] = pss.concept_and_general(correct, n_own)
    print(f"ratio {r}: Concept_after {after[r][0]:.3f}   General_after {after[r][1]:.3f}")
print(f"({time.perf_counter() - t0:.1f}s for {len(masks)} masks x {len(questions)} questions)")

# %% [markdown]
# ## 9. PSS (Eq. 6) and the excess drop
#
# `PSS = |General_after − Concept_after| / General_before` per concept and ratio, averaged over ratios: for
# one concept Eq. 6 divides by General_before(c); the README's Accuracy_before is the model-level form, over
# every concept of the benchmark (`minipss pss` reports both). Beside it, the excess drop
# `(Concept_before − Concept_after) − (General_before − General_after)` (METHOD.md §6): PSS is large whenever
# the concept's questions are harder or easier than its unrelated ones, masked or not; the excess drop
# removes that gap. `pss.concept_cell` gives both, and the other forms of PSS.

# %%
show = lambda x: "null" if x is None else f"{x:.3f}"  # PSS is None (null) where General_before is 0
scores = {r: pss.concept_cell(concept_before, general_before, *after[r], None, r) for r in RATIOS}
print("ratio   G - C    PSS  excess drop")
for r in RATIOS:
    concept_after, general_after = after[r]
    by_hand = abs(general_after - concept_after) / general_before if general_before else None  # Eq. 6
    assert by_hand == scores[r]["pss"]
    print(f"{r:<6g} {scores[r]['g_minus_c']:+.3f}  {show(scores[r]['pss'])}  {scores[r]['excess_drop']:+.3f}")
concept_pss = pss.mean(scores[r]["pss"] for r in RATIOS)
print(f"PSS of {concept.name}, mean over ratios: {show(concept_pss)}")

# %% [markdown]
# ## 10. What one concept can and cannot say (§4.1, METHOD.md §4, §9)
#
# A located mask that lowers the concept's accuracy more than the unrelated accuracy is what the paper
# calls specialization. A concept's 10 or so questions are too few to tell that from chance: a change of one
# answer moves Concept_after by 0.1. Nor does one mask say what masking as many vectors does without
# locating, or what masking as many vectors of the same magnitudes does (located vectors are mostly large
# ones). `minipss pss --control --matched-control --split-half` runs every concept with both controls
# (`minipss/method/controls.py`), located on one half of the questions and scored on the other, and the
# paired tests of METHOD.md §9.

# %%
for r in RATIOS:
    print(f"ratio {r}: concept drop {concept_before - after[r][0]:+.3f}, general drop {general_before - after[r][1]:+.3f}")

# %% [markdown]
# ## 11. A figure
#
# Left: the sorted scores S of one layer, with the located vectors of each ratio (the first k) marked.
# Right: accuracy against ratio, on t and on t*. matplotlib is optional (`pip install minipss[plot]`).

# %%
try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
    print("matplotlib is not installed: no figure (pip install matplotlib)")
if plt is not None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sorted_scores = S[LAYER, order[LAYER]].numpy()
    left.plot(range(1, d_ff + 1), sorted_scores, color="gray", lw=1)
    for r, color in sorted(zip(RATIOS, ("tab:red", "tab:orange")), reverse=True):  # the smaller set on top
        k = pss.top_k(d_ff, r)
        left.scatter(range(1, k + 1), sorted_scores[:k], s=10, color=color, zorder=3, label=f"located at r={r} (k={k})")
    left.set(xscale="log", xlabel="rank in layer", ylabel="S = |m - m*|", title=f"layer {LAYER}, Eq. 5")
    left.legend()
    xs = [0.0, *RATIOS]
    for part, name, color in ((0, "concept (t)", "tab:red"), (1, "general (t*)", "tab:blue")):
        right.plot(xs, [(concept_before, general_before)[part]] + [after[r][part] for r in RATIOS], marker="o",
                   color=color, label=name)
    right.set(xlabel="ratio masked per layer", ylabel="accuracy", ylim=(-0.05, 1.05),
              title=f"{concept.name}: located vectors masked, {MODE} mode")
    right.legend(fontsize=8)
    fig.tight_layout()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    figure = OUT_DIR / "walkthrough.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    print(f"figure: {figure}")

# %% [markdown]
# ## 12. Done
#
# `minipss pss --model weights/gemma-3-270m --bench minipss/data/minispecwiki.jsonl --out RESULT.json
# --mode cloze --ratios 0.01,0.1 --dtype float32` gives these numbers for this concept (its row of
# `concepts` in RESULT.json), beside every other concept and the model-level PSS (tested).

# %%
print(f"done in {time.perf_counter() - started:.0f}s")
