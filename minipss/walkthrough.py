# %% [markdown]
# # The paper's method on one concept, step by step
#
# *The Rise of Parameter Specialization for Knowledge Storage in Large Language Models* (NeurIPS 2025),
# §3-§4, on the real Gemma 3 270M and one concept of the bundled benchmark. Every step calls the
# library's own functions, those `minipss pss` runs; `minipss/METHOD.md` says where each one departs from
# the paper and why.
#
# Open this file as a notebook (cells are separated by `# %%` lines) or run it whole from the repository
# root: `python -m minipss.walkthrough` (2 min 44 s of CPU time in fp32, measured on a 2-core AMD EPYC;
# most of it scoring). The model is made by
# `python -m minipss.weights gemma-3-270m`. Environment variables choose other inputs:
# `MINIPSS_MODEL` (model folder, default `weights/gemma-3-270m`), `MINIPSS_BENCH` (benchmark JSONL,
# default the bundled `minispecwiki`), `MINIPSS_OUT` (where the figure goes, default `runs/walkthrough`),
# `MINIPSS_DTYPE` (`float32`, the default, or `auto`: bf16 where it is measured faster, METHOD.md §10),
# `MINIPSS_CONCEPT` (the concept's index in the benchmark, default 0).

# %%
import os
import time
from pathlib import Path

import torch

import minipss
from minipss.method import many_masks
from minipss.method.benchmark import load_benchmark, questions_of, unrelated_sets
from minipss.method.locate import (ConceptStats, cell_masks, group_stats, mask_for, question_coefficients, ranking,
                                   top_k, unit_scores)
from minipss.method.prompts import cloze_context, coefficient_prompt
from minipss.method.scores import accuracy, concept_cell, mean
from minipss.method.scoring import mcq_answers
from minipss.model.families import read_config
from minipss.model.fastest import resolve_dtype

MODEL_DIR = Path(os.environ.get("MINIPSS_MODEL", "weights/gemma-3-270m"))
BENCH = Path(os.environ.get("MINIPSS_BENCH", minipss.benchmark_path("minispecwiki")))
OUT_DIR = Path(os.environ.get("MINIPSS_OUT", "runs/walkthrough"))
DTYPE = os.environ.get("MINIPSS_DTYPE", "float32")

CONCEPT = int(os.environ.get("MINIPSS_CONCEPT", "0"))  # index in the benchmark (bundled: The Lord of the Rings)
RATIOS = (0.01, 0.1)  # share of value vectors masked per layer (the paper sweeps 0.1-0.5)
SKIP = 5  # layers 0-4 are never masked (§4.1)
SEED = 0  # draws the unrelated concepts and the random control (METHOD.md §2, §4)
MODE = "cloze"  # the fastest scoring mode on a CPU (METHOD.md §5)
N_UNRELATED = 5  # concepts whose questions form t* (§4.1)

if not (MODEL_DIR / "config.json").is_file():
    raise FileNotFoundError(f"no model at {MODEL_DIR}: make it with `python -m minipss.weights gemma-3-270m` "
                            "from the repository root, or set MINIPSS_MODEL")
started = time.perf_counter()

# %% [markdown]
# ## 1. Model, tokenizer and value vectors (§3.1, Eq. 1-2)
#
# An MLP writes `M = Σ_j m_j v_j` into the residual stream: the coefficients m enter the layer's value
# matrix, whose columns v_j are the value vectors. `model(ids, mlp_mask=...)` multiplies m by a mask, and
# `return_coefficients=True` returns the m that entered (METHOD.md §1).

# %%
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
# ## 3. Coefficients m and m* (§3.2, Appendix B.1)
#
# Each question is read as `Question: {question} Answer: {correct option}`; its coefficient vector is the
# mean |m| over its tokens (BOS left out, METHOD.md §3). m is the mean over the concept's questions, m*
# over its unrelated questions. `minipss pss` reads every concept of the benchmark; locating this concept
# needs only its own row and those of its unrelated concepts, so here only they are read and the other
# rows stay 0.

# %%
needed = [CONCEPT, *others]
texts = [coefficient_prompt(q) for j in needed for q in concepts[j].mcq]
per_question = question_coefficients(model, tok, texts)  # [questions, L, d_ff]
means = torch.zeros(len(concepts), 1, L, d_ff)  # [concepts, groups of questions (here: all), L, d_ff]
means[needed] = group_stats(per_question, [len(concepts[j].mcq) for j in needed], split=False)
stats = ConceptStats(means, [[len(c.mcq)] for c in concepts])
m, m_star = stats.means[CONCEPT, 0], stats.unrelated(stats.means, 0, others)
print(f"{texts[0]!r}")
print(f"per-question |m|: {tuple(per_question.shape)}; m and m*: {tuple(m.shape)}")

# %% [markdown]
# ## 4. Locating: S = |m − m*| (Eq. 5)
#
# The score of value vector j in layer l is `|m_j − m*_j|`; the highest-scoring ones are the concept's
# located vectors. One layer up close:

# %%
S = unit_scores(CONCEPT, stats, 0, others)  # [L, d_ff], Eq. 5
order = ranking(S)  # per layer, highest score first (ties: lower index)
LAYER = (SKIP + L) // 2
print(f"layer {LAYER}: S max {S[LAYER].max():.4f}, median {S[LAYER].median():.4f}")
print("  unit        m       m*        S")
for j in order[LAYER, :5].tolist():
    print(f"  {j:4d} {m[LAYER, j]:8.4f} {m_star[LAYER, j]:8.4f} {S[LAYER, j]:8.4f}")

# %% [markdown]
# ## 5. How many per layer, and where (§4.1)
#
# Ratio r masks the top `round(r · d_ff)` of every layer l ≥ 5; the first five layers are never touched
# (METHOD.md §4).

# %%
for r in RATIOS:
    k = top_k(d_ff, r)
    print(f"ratio {r}: top {k} of {d_ff} per layer in layers {SKIP}-{L - 1}; layer {LAYER}, best first: "
          f"{order[LAYER, :min(k, 10)].tolist()}{' ...' if k > 10 else ''}")

# %% [markdown]
# ## 6. The mask (Eq. 4) and the random control
#
# Masking sets the located m_j to 0 at every position (Eq. 4): the mask is 1 everywhere but there.
# `cell_masks` builds every mask `minipss pss` scores for a concept: the located ones (`mask_for` over
# the Eq. 5 ranking) and, as the control the reviewers asked for, as many value vectors per layer drawn at
# random with a seeded generator (METHOD.md §4).

# %%
CELLS = [(kind, r) for r in RATIOS for kind in ("located", "random")]
masks, _ = cell_masks(CONCEPT, CELLS, stats, others, SKIP, SEED)  # [cells, L, d_ff]
for n, (kind, r) in enumerate(CELLS):
    zeros = (masks[n] == 0).sum(1)
    print(f"{kind:8s} ratio {r}: zeros per layer {zeros.tolist()}")
    if kind == "located":
        assert torch.equal(masks[n], mask_for(order, r, SKIP))  # Eq. 4 over the Eq. 5 ranking
assert (masks[:, :SKIP] == 1).all()

# %% [markdown]
# ## 7. Accuracy before masking (Appendix B.1, C.1)
#
# The paper asks with a 3-shot lettered prompt and reads the generated letter (`generate` mode). Small
# models often cannot answer in that format, and generating is the slowest mode, so this walkthrough uses
# `cloze`, the fastest of the three on a CPU: each option scored by the summed log-probability of its tokens after
# `Question: {question}\nAnswer:`, the highest wins (METHOD.md §5). `minipss pss --mode generate` runs the
# paper's.

# %%
t0 = time.perf_counter()
print(f"cloze context: {cloze_context(first.question)!r}")
before = [a == q.answer for a, q in zip(mcq_answers(model, tok, questions, MODE), questions)]
concept_before, general_before = accuracy(before[:n_own]), accuracy(before[n_own:])
print(f"Concept_before {concept_before:.3f}   General_before {general_before:.3f}   "
      f"({time.perf_counter() - t0:.1f}s)")

# %% [markdown]
# ## 8. Accuracy after masking (§3.3)
#
# The same questions under each mask. `many_masks.answers` scores all masks at once, running the layers
# below 5 (which no mask touches) once for all of them; its answers equal `mcq_answers` mask by mask
# (tested), and it is what `minipss pss` uses.

# %%
t0 = time.perf_counter()
after = many_masks.answers(model, tok, questions, masks.to(model.dtype), SKIP, MODE)
after_acc = {}
for (kind, r), answers in zip(CELLS, after):
    correct = [a == q.answer for a, q in zip(answers, questions)]
    after_acc[kind, r] = accuracy(correct[:n_own]), accuracy(correct[n_own:])
    print(f"{kind:8s} ratio {r}: Concept_after {after_acc[kind, r][0]:.3f}   "
          f"General_after {after_acc[kind, r][1]:.3f}")
print(f"({time.perf_counter() - t0:.1f}s for {len(CELLS)} masks x {len(questions)} questions)")

# %% [markdown]
# ## 9. PSS (Eq. 6)
#
# `PSS = |General_after − Concept_after| / General_before`, per concept and ratio, averaged over ratios.
# Beside it, the excess drop `(Concept_before − Concept_after) − (General_before − General_after)`
# (METHOD.md §6): PSS is large whenever the concept's questions are harder or easier than its unrelated
# ones, masked or not; the excess drop removes that gap. `concept_cell` also gives PSS over the accuracy
# of the whole benchmark (`pss_acc_before`), which this walkthrough does not measure, so it passes the
# accuracy of these questions there and does not show that form.

# %%
acc_here = accuracy(before)
show = lambda x: "null" if x is None else f"{x:.3f}"  # PSS is None (null) where General_before is 0
scores = {cell: concept_cell(concept_before, general_before, *after_acc[cell], acc_here, cell[1]) for cell in CELLS}
print("kind     ratio   G - C    PSS  excess drop")
for kind, r in CELLS:
    s = scores[kind, r]
    print(f"{kind:8s} {r:<6g} {s['g_minus_c']:+.3f}  {show(s['pss'])}  {s['excess_drop']:+.3f}")
pss = {kind: mean(scores[kind, r]["pss"] for r in RATIOS) for kind in ("located", "random")}
print(f"PSS of {concept.name}, mean over ratios: located {show(pss['located'])}, random {show(pss['random'])}")

# %% [markdown]
# ## 10. What one concept can and cannot say (§4.1, METHOD.md §4, §9)
#
# A located mask that lowers the concept's accuracy more than the unrelated accuracy is what the paper
# calls specialization. A concept's 10 or so questions are too few to tell that from chance: a change of one
# answer moves Concept_after by 0.1. The random control shows what masking as many vectors does without
# locating; located vectors are also mostly large ones (METHOD.md §4), which `--matched-control` accounts
# for. `minipss pss --control --matched-control --split-half` runs every concept with both controls and
# the paired tests of METHOD.md §9.

# %%
for r in RATIOS:
    drops = {kind: (concept_before - scores[kind, r]["concept_after"],
                    general_before - scores[kind, r]["general_after"]) for kind in ("located", "random")}
    print(f"ratio {r}: concept drop {drops['located'][0]:+.3f} located, {drops['random'][0]:+.3f} random; "
          f"general drop {drops['located'][1]:+.3f} located, {drops['random'][1]:+.3f} random")

# %% [markdown]
# ## 11. A figure
#
# Left: the sorted scores S of one layer, with the located vectors of each ratio (the first k) marked.
# Right: accuracy against ratio, located and random. matplotlib is optional (`pip install minipss[plot]`).

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
        k = top_k(d_ff, r)
        left.scatter(range(1, k + 1), sorted_scores[:k], s=10, color=color, zorder=3, label=f"located at r={r} (k={k})")
    left.set(xscale="log", xlabel="rank in layer", ylabel="S = |m - m*|", title=f"layer {LAYER}, Eq. 5")
    left.legend()
    xs = [0.0, *RATIOS]
    for kind, style in (("located", "-"), ("random", ":")):
        for part, name, color in ((0, "concept", "tab:red"), (1, "general", "tab:blue")):
            ys = [(concept_before, general_before)[part]] + [after_acc[kind, r][part] for r in RATIOS]
            right.plot(xs, ys, style, marker="o", color=color, label=f"{name}, {kind}")
    right.set(xlabel="ratio masked per layer", ylabel="accuracy", ylim=(-0.05, 1.05),
              title=f"{concept.name}: t and t*, {MODE} mode")
    right.legend(fontsize=8)
    fig.tight_layout()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    figure = OUT_DIR / "walkthrough.png"
    fig.savefig(figure, dpi=120)
    print(f"figure: {figure}")

# %% [markdown]
# ## 12. Done
#
# `minipss pss --model weights/gemma-3-270m --bench minipss/data/minispecwiki.jsonl --out RESULT.json
# --mode cloze --ratios 0.01,0.1 --control --dtype float32` gives these numbers for this concept (its row
# of `concepts` in RESULT.json), beside every other concept and the model-level PSS (tested).

# %%
print(f"done in {time.perf_counter() - started:.0f}s")
