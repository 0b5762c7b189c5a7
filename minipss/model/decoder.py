"""The forward pass every family shares, and what a family file declares about itself.

The two things the paper's method needs enter the model as plain arguments: `mlp_mask` rescales the
coefficient vector m of every layer (zero-masking value vectors, §4.1) and `return_coefficients` hands
back the m that entered the value matrix (`down_proj`, `fc_out`, ...; §3.2). `forward` is composed of
three public pieces that the shared-work evaluator also calls on their own: `embed`, `run_blocks` (any
range of blocks, from a given residual stream) and `head` (on chosen positions and vocabulary rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .config import ModelConfig
from .layers import KVCache, Rotary, MLPMask, alibi_bias, allowed_keys, inv_freq


@dataclass
class Output:
    logits: torch.Tensor | None  # [B, T, vocab] (or the last `logits_to_keep` positions)
    coefficients: list[torch.Tensor] | None = None  # per layer [B, T, d_ff] (or pooled [B, d_ff])


class Coefficients(list):
    """Collects the coefficient vector m of each layer, after its mask (§3.2). With `pool` (`[B, T]`
    token weights) each layer is reduced at once to the weighted mean of |m| (of m when not
    `absolute`) over tokens, `[B, d_ff]`, so no full-sequence tensor is kept."""

    def __init__(self, pool: torch.Tensor | None = None, absolute: bool = True):
        super().__init__()
        self.pool = None if pool is None else pool.float() / pool.float().sum(1, keepdim=True).clamp(min=1e-9)
        self.absolute = absolute

    def append(self, m: torch.Tensor) -> None:
        if self.pool is not None:
            m = torch.einsum("btf,bt->bf", (m.abs() if self.absolute else m).float(), self.pool)
        super().append(m)


class Decoder(nn.Module):
    """Base of every family model. A family's model class names its modules as the checkpoint does and
    declares where its parts are:

    - `blocks_path`: the list of blocks (`"model.layers"`);
    - `value_matrix`: inside a block, the linear map whose input is m and whose columns are the value
      vectors (`"mlp.down_proj"`); the trainer and the transformers reference ask for it;
    - `embedding_path`, `final_norm_path` and `head_path`: the token embedding, the norm before the head
      and the output matrix (tied heads share the embedding's); `positions_path`, where learned absolute
      positions are added to the token embedding.
    Its `__init__` hands over the block class and the final norm; `embeddings` is replaced where the family
    adds something (a scale). Each block is built as `block(config)`, called as
    `block(x, attention, mlp_mask, coefficients)` and returns the new stream."""

    config: ModelConfig
    blocks_path: str
    value_matrix: str
    embedding_path: str
    final_norm_path: str
    head_path: str = "lm_head"
    positions_path: str | None = None

    def __init__(self, config: ModelConfig, block: Callable[[ModelConfig], nn.Module], final_norm: nn.Module,
                 head_bias: bool = False):
        """Put the token embedding, the position embedding (`max_positions` rows, when declared), one
        `block(config)` per layer, the final norm and the head at their paths, in the checkpoint's order."""
        super().__init__()
        self.config = c = config
        self.place(self.embedding_path, nn.Embedding(c.vocab_size, c.hidden_size))
        if self.positions_path is not None:
            self.place(self.positions_path, nn.Embedding(c.max_positions, c.hidden_size))
        self.place(self.blocks_path, nn.ModuleList(block(c) for _ in range(c.num_layers)))
        self.place(self.final_norm_path, final_norm)
        self.place(self.head_path, nn.Linear(c.hidden_size, c.vocab_size, bias=head_bias))

    def place(self, path: str, module: nn.Module) -> None:
        """Register `module` under the dotted `path` (`"model.layers"`), adding empty containers as needed."""
        *containers, name = path.split(".")
        parent: nn.Module = self
        for part in containers:
            if part not in dict(parent.named_children()):
                parent.add_module(part, nn.Module())
            parent = parent.get_submodule(part)
        parent.add_module(name, module)

    # ------------------------------------------------------------ what a family may replace

    def embeddings(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The token embedding, plus the learned positions' where the family has them."""
        x = self.get_submodule(self.embedding_path)(input_ids)
        if self.positions_path is not None:
            x = x + self.get_submodule(self.positions_path)(position_ids)
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_submodule(self.final_norm_path)(x)

    # ------------------------------------------------------------ shared

    def blocks(self) -> nn.ModuleList:
        return self.get_submodule(self.blocks_path)

    def value_matrices(self) -> list[nn.Linear]:
        """Per layer, the linear map whose columns are the value vectors (§3.1), `weight` `[d, d_ff]`."""
        return [block.get_submodule(self.value_matrix) for block in self.blocks()]

    def tie_weights(self) -> None:
        """Tied checkpoints have no output matrix: the head reads the embedding matrix."""
        self.get_submodule(self.head_path).weight = self.get_submodule(self.embedding_path).weight

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
              cache: KVCache | None = None) -> torch.Tensor:
        """The residual stream entering block 0."""
        if position_ids is None:
            position_ids = default_positions(input_ids, cache)
        return self.embeddings(input_ids, position_ids)

    def head(self, x: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm, then logits (softcapped where the family does). `vocab` restricts the logits to
        those token ids, e.g. the four answer letters, without the full-vocabulary matmul."""
        out = self.get_submodule(self.head_path)
        w, b = out.weight, out.bias
        if vocab is not None:
            w, b = w[vocab], None if b is None else b[vocab]
        logits = torch.nn.functional.linear(self.final_norm(x), w, b)
        cap = self.config.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None, attention_mask=None,
                   position_ids=None, mlp_mask=None, cache: KVCache | None = None,
                   coefficients: Coefficients | None = None) -> torch.Tensor:
        """Blocks `start..stop-1` on the residual stream `x` `[B, T, d]`; returns the stream after them.

        attention_mask `[B, past + T]` (1 real, 0 padding); position_ids `[B, T]` (default arange after
        the cached tokens); mlp_mask as in `forward`, for all L layers; `coefficients` collects m."""
        c = self.config
        stop = c.num_layers if stop is None else stop
        if start == stop:
            return x
        B, T = x.shape[:2]
        past = 0 if cache is None or cache.k[start] is None else cache.k[start].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=x.device)
        if attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device).expand(B, T)
        mlp_mask = MLPMask.of(mlp_mask, B, c.num_layers, c.intermediate_size)
        rotary = self.rotaries(position_ids, x.dtype)
        allowed = {}
        for kind in set(c.layer_types):
            allowed[kind] = allowed_keys(attention_mask, T, c.sliding_window if kind == "sliding" else None)
            if c.alibi:
                allowed[kind] = alibi_bias(allowed[kind], c.num_heads, c.alibi_max_bias, x.dtype)
        for i in range(start, stop):
            kind = c.layer_types[i]
            attention = AttentionContext(rotary[kind], allowed[kind], cache, i)
            x = self.blocks()[i](x, attention, None if mlp_mask is None else mlp_mask.layer(i), coefficients)
        return x

    def rotaries(self, positions: torch.Tensor, dtype) -> dict[str, Rotary | None]:
        """RoPE tables per layer type (None without RoPE), in the compute dtype or in fp32 (`rope_fp32`);
        sliding layers may have their own base (`local_rope_theta`), without scaling."""
        c = self.config
        if not c.rope:
            return {"full": None, "sliding": None}
        dtype = torch.float32 if c.rope_fp32 else dtype
        dim = c.rotary_dim or c.head_dim
        full = Rotary(inv_freq(dim, c.rope_theta, c.rope_scaling), positions, dtype, c.rope_interleaved)
        if c.local_rope_theta is None:
            return {"full": full, "sliding": full}
        local = Rotary(inv_freq(dim, c.local_rope_theta), positions, dtype, c.rope_interleaved)
        return {"full": full, "sliding": local}

    def forward(self, input_ids, attention_mask=None, position_ids=None, mlp_mask=None,
                return_coefficients: bool = False, cache: KVCache | None = None,
                logits_to_keep: int = 0) -> Output:
        """input_ids `[B, T]`; attention_mask `[B, past + T]` (1 real, 0 padding); position_ids
        `[B, T]` (default arange after the cached tokens); mlp_mask broadcastable to `[B, L, d_ff]`,
        multiplies m at every position of layer l (or `[B, L, 2 * d_ff]`: the multiplier, then a value
        to add, see `layers.MLPMask`); logits_to_keep > 0 keeps only the last positions' logits."""
        if position_ids is None:
            position_ids = default_positions(input_ids, cache)
        coefficients = Coefficients() if return_coefficients else None
        x = self.embed(input_ids, position_ids)
        x = self.run_blocks(x, 0, None, attention_mask, position_ids, mlp_mask, cache, coefficients)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return Output(self.head(x), None if coefficients is None else list(coefficients))


@dataclass
class AttentionContext:
    """What a block's attention needs besides its input: RoPE tables (None without RoPE), the allowed
    keys (boolean, or an additive float bias such as ALiBi's), the KV cache and the layer's index."""
    rotary: Rotary | None
    allowed: torch.Tensor
    cache: KVCache | None
    layer: int


def default_positions(input_ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    past = 0 if cache is None else cache.length()
    B, T = input_ids.shape
    return torch.arange(past, past + T, device=input_ids.device).expand(B, T)


@dataclass(frozen=True)
class Family:
    """Everything shared code may ask about a family; each file in `minipss/model/families/` declares one.

    - `model_types`: the config.json `model_type`s it serves;
    - `parse_config`: config.json (either dialect) -> `ModelConfig`;
    - `model`: the `Decoder` subclass, its modules named as the checkpoint's keys;
    - `ignored_keys`: checkpoint key suffixes that are buffers, not weights;
    - `transposed`: key suffixes stored `[in, out]` (GPT-2's Conv1D), transposed on load and save;
    - `renamed_prefixes` / `skipped_prefixes`: checkpoint prefixes mapped to ours, or not text weights
      (multimodal checkpoints);
    - `gguf_archs` / `gguf_names`: for converting llama.cpp's GGUF files, its `general.architecture`s
      (-> model_type) and its tensor-name pieces (-> the checkpoint's)."""
    model_types: tuple[str, ...]
    parse_config: Callable[[dict], ModelConfig]
    model: type[Decoder]
    ignored_keys: tuple[str, ...] = (".rotary_emb.inv_freq",)
    transposed: tuple[str, ...] = ()
    renamed_prefixes: dict[str, str] = field(default_factory=dict)
    skipped_prefixes: tuple[str, ...] = ()
    gguf_archs: dict[str, str] = field(default_factory=dict)
    gguf_names: dict[str, str] = field(default_factory=dict)
