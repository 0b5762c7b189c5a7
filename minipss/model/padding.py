"""Padding token sequences into batches: prompts on the left (decoding continues after the last real
token of every row), continuations and training sequences on the right (causal attention never reads the
padding that follows them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device="cpu"):
    """`(ids, attention_mask, position_ids)` for prompts padded on the left; positions count real tokens
    from 0 in every row, as HF generate does."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device), positions(mask).to(device)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int = 0, device="cpu"):
    """`(ids, attention_mask)` for sequences padded on the right (continuations of a cached prefix,
    training batches): padding comes after every real token, so causal attention never reads it."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)
