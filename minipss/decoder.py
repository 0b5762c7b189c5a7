"""The forward pass every family shares: embed, run the blocks, final norm and head.

It is here that the two arguments the paper's method needs enter the model, as plain arguments:
`mlp_mask` multiplies the coefficient vector m of every layer (zero-masking value vectors, §4.1) and
`return_coefficients` hands back the m that entered `down_proj` / `fc_out` (§3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .layers import KVCache, Rotary, allowed_keys, inv_freq


@dataclass
class Output:
    logits: torch.Tensor | None  # [B, T, vocab] (or the last `logits_to_keep` positions)
    coefficients: list[torch.Tensor] | None = None  # per layer [B, T, d_ff] (or pooled [B, d_ff])
    hidden_states: list[torch.Tensor] | None = None  # residual stream: embeddings, then after each block
    cache: KVCache | None = None


class CoefficientTap(list):
    """Collects m per layer. With `pool` (`[B, T]` token weights) each layer is reduced at once to the
    weighted mean of |m| over tokens, `[B, d_ff]`, so no full-sequence tensor is kept."""

    def __init__(self, pool: torch.Tensor | None = None):
        super().__init__()
        self.pool = None if pool is None else pool.float() / pool.float().sum(1, keepdim=True).clamp(min=1e-9)

    def append(self, m: torch.Tensor) -> None:
        if self.pool is not None:
            m = torch.einsum("btf,bt->bf", m.abs().float(), self.pool)
        super().append(m)


class Decoder(nn.Module):
    """Base of every family model. A family defines its modules (named as in the HF checkpoint) and
    three methods: `embed(ids)`, `blocks()` (the layer list) and `head(x)` (final norm -> logits)."""

    config: ModelConfig

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tie_weights(self) -> None:
        """Tied checkpoints have no lm_head: the head reads the embedding matrix."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def rotaries(self, positions: torch.Tensor, dtype) -> dict[str, Rotary]:
        """RoPE tables per layer type; Gemma 3's sliding layers have their own base and no scaling."""
        c = self.config
        dim = c.rotary_dim or c.head_dim
        interleaved = c.model_type == "gptj"
        full = Rotary(inv_freq(dim, c.rope_theta, c.rope_scaling), positions, dtype, interleaved)
        if c.local_rope_theta is None:
            return {"full": full, "sliding": full}
        return {"full": full, "sliding": Rotary(inv_freq(dim, c.local_rope_theta), positions, dtype)}

    def forward(self, input_ids, attention_mask=None, position_ids=None, mlp_mask=None,
                return_coefficients=False, cache: KVCache | None = None, logits_to_keep: int = 0,
                return_hidden_states=False, coefficient_pool=None, return_logits=True) -> Output:
        """input_ids `[B, T]`; attention_mask `[B, past + T]` (1 real, 0 left padding); position_ids
        `[B, T]` (default arange); mlp_mask broadcastable to `[B, L, d_ff]`, multiplies m at every
        position of layer l; logits_to_keep > 0 keeps only the last positions' logits."""
        c = self.config
        B, T = input_ids.shape
        past = 0 if cache is None or cache.k[0] is None else cache.k[0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=input_ids.device)
        if attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        if mlp_mask is not None and mlp_mask.shape[-2:] != (c.num_layers, c.intermediate_size):
            raise ValueError(f"mlp_mask has shape {tuple(mlp_mask.shape)}; its last two dims must be "
                             f"(layers, d_ff) = {(c.num_layers, c.intermediate_size)}")
        x = self.embed(input_ids)
        rotary = self.rotaries(position_ids, x.dtype)
        allowed = {kind: allowed_keys(attention_mask, T, c.sliding_window if kind == "sliding" else None)
                   for kind in set(c.layer_types)}
        taps = CoefficientTap(coefficient_pool) if return_coefficients else None
        hidden = [x] if return_hidden_states else None
        for i, block in enumerate(self.blocks()):
            kind = c.layer_types[i]
            mask = None if mlp_mask is None else mlp_mask[..., i, :]
            x = block(x, rotary[kind], allowed[kind], cache, i, mask, taps)
            if hidden is not None:
                hidden.append(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(x) if return_logits else None
        return Output(logits, list(taps) if taps is not None else None, hidden, cache)
