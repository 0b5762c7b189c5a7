"""Open-ended questions under a value-vector mask (§3.4, §5): zero-shot, greedy, judged by the normalised gold
answer occurring in the generation (METHOD.md §5; the paper judged with GPT-4o)."""

from __future__ import annotations

import torch

from ..model.generate import generate
from .prompts import open_correct, open_prompt
from .pss import batches, mask_rows

OPEN_TOKENS = 150


@torch.inference_mode()
def open_answers(model, tok, questions: list[dict], mlp_mask=None, batch_size: int = 16,
                 max_new_tokens: int = OPEN_TOKENS, return_texts: bool = False):
    """Whether each open question is answered correctly under `mlp_mask` (as in `pss.mcq_scores`); with
    `return_texts`, also the generations."""
    correct, texts = [], []
    for idx in batches(len(questions), batch_size):
        prompts = [tok.encode(open_prompt(questions[i]["question"])) for i in idx]
        outs = generate(model, prompts, max_new_tokens, tok.eos_ids, tok.pad_id, mlp_mask=mask_rows(mlp_mask, idx))
        texts += [tok.decode(o) for o in outs]
        correct += [open_correct(texts[i], questions[i]["answer"]) for i in idx]
    return (correct, texts) if return_texts else correct
