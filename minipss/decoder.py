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


class CoefficientTap(list):
    """Collects m per layer. With `pool` (`[B, T]` token weights) each layer is reduced at once to the
    weighted mean of |m| (of m when not `absolute`) over tokens, `[B, d_ff]`, so no full-sequence tensor
    is kept."""

    def __init__(self, pool: torch.Tensor | None = None, absolute: bool = True):
        super().__init__()
        self.pool = None if pool is None else pool.float() / pool.float().sum(1, keepdim=True).clamp(min=1e-9)
        self.absolute = absolute

    def append(self, m: torch.Tensor) -> None:
        if self.pool is not None:
            m = torch.einsum("btf,bt->bf", (m.abs() if self.absolute else m).float(), self.pool)
        super().append(m)


class Decoder(nn.Module):
    """Base of every family model. A family defines its modules (named as in the HF checkpoint), among
    them `lm_head`, and `embed(ids)`, `blocks()` (the layer list) and `final_norm(x)`."""

    config: ModelConfig

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, x: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm, then logits (softcapped where the family does). `vocab` restricts the logits to
        those token ids, e.g. the four answer letters, without the full-vocabulary matmul."""
        w, b = self.lm_head.weight, self.lm_head.bias
        if vocab is not None:
            w, b = w[vocab], None if b is None else b[vocab]
        logits = torch.nn.functional.linear(self.final_norm(x), w, b)
        cap = self.config.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

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
                return_hidden_states=False, coefficient_pool=None, coefficient_abs=True, return_logits=True,
                layers: tuple[int, int] | None = None, hidden: torch.Tensor | None = None) -> Output:
        """input_ids `[B, T]`; attention_mask `[B, past + T]` (1 real, 0 padding); position_ids
        `[B, T]` (default arange); mlp_mask broadcastable to `[B, L, d_ff]`, multiplies m at every
        position of layer l (or `[B, L, 2 * d_ff]`: multiplier, then a value to add; see layers.tap);
        logits_to_keep > 0 keeps only the last positions' logits.

        `layers=(start, stop)` runs only blocks start..stop-1, reading the residual stream `hidden`
        when start > 0 and returning it (as `hidden_states[-1]`, no logits) when stop < L: work that
        a mask cannot change (blocks below the first masked layer) is then done once for many masks."""
        c = self.config
        start, stop = layers or (0, c.num_layers)
        B, T = input_ids.shape
        if start == stop:  # no block to run (e.g. nothing below skip = 0): the stream as it comes in
            return Output(None, [], [self.embed(input_ids) if start == 0 else hidden])
        past = 0 if cache is None or cache.k[start] is None else cache.k[start].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=input_ids.device)
        if attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        if mlp_mask is not None:
            width = mlp_mask.shape[-1] if mlp_mask.shape[-1] == 2 * c.intermediate_size else c.intermediate_size
            try:
                mlp_mask = torch.broadcast_to(mlp_mask, (B, c.num_layers, width))
            except RuntimeError:
                raise ValueError(f"mlp_mask has shape {tuple(mlp_mask.shape)}, not broadcastable to "
                                 f"(batch, layers, d_ff) = {(B, c.num_layers, c.intermediate_size)}") from None
        x = self.embed(input_ids) if start == 0 else hidden
        rotary = self.rotaries(position_ids, x.dtype)
        allowed = {kind: allowed_keys(attention_mask, T, c.sliding_window if kind == "sliding" else None)
                   for kind in set(c.layer_types)}
        taps = CoefficientTap(coefficient_pool, coefficient_abs) if return_coefficients else None
        states = [x] if return_hidden_states or stop < c.num_layers else None
        for i in range(start, stop):
            kind = c.layer_types[i]
            mask = None if mlp_mask is None else mlp_mask[:, i]
            x = self.blocks()[i](x, rotary[kind], allowed[kind], cache, i, mask, taps)
            if states is not None:
                states.append(x)
        if stop < c.num_layers:
            return Output(None, list(taps) if taps is not None else None, states)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(x) if return_logits else None
        return Output(logits, list(taps) if taps is not None else None, states)
