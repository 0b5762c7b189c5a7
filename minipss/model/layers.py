"""What the decoder families share: norms, RoPE, attention with causal/sliding masks, and the MLP
with the coefficients they hand back and their mask (the value-vector view of the paper's §3.1, Eq. 1-2).

Every family file in `minipss/model/families/` builds its blocks from these pieces.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACT = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class RMSNorm(nn.Module):
    """RMSNorm normalised in fp32. LLaMA style: cast back, then `* w`. Gemma style (`offset=True`):
    `* (1 + w)` in fp32, then cast; the stored weight is an offset around 0. `weight_in_fp32=True`:
    `* w` in fp32, then cast (the order matters in bf16 only)."""

    def __init__(self, dim: int, eps: float, offset: bool = False, weight_in_fp32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))
        self.eps, self.offset, self.weight_in_fp32 = eps, offset, weight_in_fp32

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (y * (1.0 + self.weight.float())).to(x.dtype)
        if self.weight_in_fp32:
            return (y * self.weight.float()).to(x.dtype)
        return self.weight * y.to(x.dtype)


# ---------------------------------------------------------------- rotary position embeddings


def inv_freq(dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """RoPE frequencies in fp32, with `linear` or `llama3` scaling (Llama 3.1's wavelength bands)."""
    freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if scaling is None:
        return freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return freq / factor
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > old_len / low, freq / factor, freq)  # long waves: slowed down
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    middle = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(middle, blended, scaled)


class Rotary:
    """cos/sin tables for one forward pass, applied to `[B, H, T, D]` tensors.

    `interleaved=False`: rotate_half over the whole head (LLaMA, Qwen, Gemma).
    `interleaved=True`: pairs (0,1), (2,3), ... over the first `rotary_dim` dims only (GPT-J)."""

    def __init__(self, freq: torch.Tensor, positions: torch.Tensor, dtype, interleaved: bool = False):
        angles = positions[:, None, :, None].float() * freq.to(positions.device)  # [B, 1, T, D/2]
        angles = angles.repeat_interleave(2, dim=-1) if interleaved else torch.cat([angles, angles], dim=-1)
        self.cos, self.sin = angles.cos().to(dtype), angles.sin().to(dtype)
        self.interleaved, self.dim = interleaved, angles.shape[-1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., : self.dim], x[..., self.dim:]
        if self.interleaved:
            turned = torch.stack([-rot[..., 1::2], rot[..., ::2]], dim=-1).flatten(-2)
        else:
            half = rot.shape[-1] // 2
            turned = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        out = (rot * self.cos + turned * self.sin).to(x.dtype)  # tables in fp32: rotated in fp32, cast back
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


# ---------------------------------------------------------------- attention


def allowed_keys(attention_mask: torch.Tensor, n_query: int, window: int | None) -> torch.Tensor:
    """Boolean `[B, 1, Tq, Tk]`: query i (the last `n_query` of the Tk positions) sees key j iff
    j <= i, j is not padding, and (with a sliding window W) i - W < j; and always itself."""
    n_key = attention_mask.shape[1]
    device = attention_mask.device
    q = torch.arange(n_key - n_query, n_key, device=device)[:, None]
    k = torch.arange(n_key, device=device)[None, :]
    ok = k <= q
    if window is not None:
        ok = ok & (k > q - window)
    # a padding query sees itself, so no row is fully masked (no NaN can reach real rows through it)
    return (ok[None, None] & attention_mask[:, None, None, :].bool()) | (k == q)[None, None]


def alibi_slopes(num_heads: int, max_bias: float) -> torch.Tensor:
    """ALiBi's per-head slopes 2^(-max_bias * h / n) for n the next power of two; with fewer heads, the
    odd-numbered slopes first, then the even ones (as MPT's checkpoints were trained)."""
    n = 2 ** math.ceil(math.log2(num_heads))
    slopes = 2.0 ** (-torch.arange(1, n + 1, dtype=torch.float32) * (max_bias / n))
    if n != num_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes


def alibi_bias(allowed: torch.Tensor, num_heads: int, max_bias: float, dtype) -> torch.Tensor:
    """The additive attention bias `[B, H, Tq, Tk]` of ALiBi: slope_h * (j - last key) on allowed keys,
    the dtype's minimum elsewhere. It depends on the key's index only, a constant shift per query, so a
    left-padded row gets the softmax of the same row run alone."""
    n_key = allowed.shape[-1]
    distance = torch.arange(1 - n_key, 1, device=allowed.device, dtype=torch.float32)
    bias = (alibi_slopes(num_heads, max_bias).to(allowed.device)[:, None, None] * distance).to(dtype)
    return torch.where(allowed, bias[None], torch.finfo(dtype).min)


def attend(q, k, v, allowed, scale: float, softcap: float | None = None):
    """Attention as HF's eager path computes it: scores in the compute dtype, optional tanh softcap,
    masked (or biased: `allowed` may be an additive float bias), softmax in fp32, cast back. GQA: query
    head h reads kv head h // (n_heads / n_kv).

    Without a softcap the same computation goes to torch's scaled_dot_product_attention (equal within
    float rounding; tested against transformers like the eager form)."""
    if softcap is None and q.dtype == v.dtype:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.to(q.dtype) if allowed.is_floating_point()
                                              else allowed, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    B, H, T, D = q.shape
    kv = k.shape[1]
    q = q.view(B, kv, H // kv, T, D)  # heads grouped by the kv head they read, without copying k, v
    scores = (q @ k[:, :, None].transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if allowed.is_floating_point():  # [B, H, Tq, Tk] bias, grouped like the heads
        scores = scores + allowed.view(B, -1, H // kv if allowed.shape[1] == H else 1, *allowed.shape[2:])
    else:
        scores = scores.masked_fill(~allowed[:, :, None], torch.finfo(scores.dtype).min)
    out = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype) @ v[:, :, None]
    return out.view(B, H, T, -1)


def multi_head_attention(q, k, v, context, scale: float, softcap: float | None = None,
                         fp32: bool = False) -> torch.Tensor:
    """The part of attention every family shares, from per-head q, k, v `[B, T, heads, head_dim]`:
    RoPE (when the family has it), the KV cache, `attend`; returns `[B, T, heads * head_dim]` for the
    output projection. `context` is the block's `decoder.AttentionContext`; `fp32` (`attn_fp32`) casts
    q and k to fp32 after the cache, so the scores and their softmax are computed in fp32."""
    B, T = q.shape[:2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if context.rotary is not None:
        q, k = context.rotary(q), context.rotary(k)
    if context.cache is not None:
        k, v = context.cache.update(context.layer, k, v)
    if fp32:
        q, k = q.float(), k.float()
    return attend(q, k, v, context.allowed, scale, softcap).transpose(1, 2).reshape(B, T, -1)


class KVCache:
    """Keys and values of the tokens seen so far, per layer, `[B, n_kv, T, head_dim]`."""

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, k, v):
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def length(self) -> int:
        """Tokens cached so far (0 when empty)."""
        return next((t.shape[2] for t in self.k if t is not None), 0)

    def rows(self, index: torch.Tensor) -> "KVCache":
        """A cache of these batch rows, in this order (repeats allowed): finished rows leave a batch,
        one cached prefix serves many continuations."""
        out = KVCache(len(self.k))
        out.k = [None if t is None else t[index] for t in self.k]
        out.v = [None if t is None else t[index] for t in self.v]
        return out


class SelfAttention(nn.Module):
    """q/k/v/o projections (optional biases), optional clamp of q, k, v to [-clip_qkv, clip_qkv], optional
    q/k norms before RoPE (per head, or over the whole projection with `qk_norm_whole`), GQA."""

    def __init__(self, cfg, norm=None):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=cfg.o_bias)
        if cfg.qk_norm:
            whole = cfg.qk_norm_whole
            self.q_norm = norm(cfg.num_heads * hd if whole else hd)
            self.k_norm = norm(cfg.num_kv_heads * hd if whole else hd)
        self.qk_norm, self.qk_norm_whole, self.clip = cfg.qk_norm, cfg.qk_norm_whole, cfg.clip_qkv
        self.head_dim, self.scale, self.softcap = hd, cfg.scale, cfg.attn_softcap

    def forward(self, x, context):
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.clip is not None:
            q, k, v = (t.clamp(-self.clip, self.clip) for t in (q, k, v))
        if self.qk_norm and self.qk_norm_whole:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(B, T, -1, self.head_dim) for t in (q, k, v))
        if self.qk_norm and not self.qk_norm_whole:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.o_proj(multi_head_attention(q, k, v, context, self.scale, self.softcap))


# ---------------------------------------------------------------- the MLP: value vectors, mask, coefficients


class MLPMask:
    """The one representation of a value-vector mask: per batch row and layer, m becomes
    `m * scale + shift` (§4.1). Zero-masking sets scale_j = 0 (shift None); mean-ablation also adds the
    mean m_j over the unrelated questions as shift_j.

    Callers pass `mlp_mask` broadcastable to `[B, L, d_ff]` (scale only) or to `[B, L, 2 * d_ff]`
    (scale, then shift, concatenated); `of` normalises it once, where it enters the model."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor | None = None):
        self.scale, self.shift = scale, shift

    @classmethod
    def of(cls, mlp_mask, batch: int, num_layers: int, d_ff: int) -> "MLPMask | None":
        if mlp_mask is None or isinstance(mlp_mask, cls):
            return mlp_mask
        width = 2 * d_ff if mlp_mask.shape[-1] == 2 * d_ff else d_ff
        try:
            mlp_mask = torch.broadcast_to(mlp_mask, (batch, num_layers, width))
        except RuntimeError:
            raise ValueError(f"mlp_mask has shape {tuple(mlp_mask.shape)}, not broadcastable to "
                             f"(batch, layers, d_ff) = {(batch, num_layers, d_ff)}") from None
        return cls(mlp_mask[..., :d_ff], mlp_mask[..., d_ff:] if width > d_ff else None)

    def layer(self, i: int) -> "MLPMask":
        """This layer's mask, `[B, 1, d_ff]`: the same at every position."""
        return MLPMask(self.scale[:, i, None], None if self.shift is None else self.shift[:, i, None])

    def apply(self, m: torch.Tensor) -> torch.Tensor:
        if self.shift is None:
            return m * self.scale.to(m.dtype)
        return torch.addcmul(self.shift.to(m.dtype), m, self.scale.to(m.dtype))


def masked_coefficients(m: torch.Tensor, mlp_mask: MLPMask | None, coefficients: list | None) -> torch.Tensor:
    """The coefficient vector m (`[B, T, d_ff]`) as it enters the value matrix: the layer's mask
    applied, then recorded when `coefficients` collects (§3.1, Eq. 1-2)."""
    if mlp_mask is not None:
        m = mlp_mask.apply(m)
    if coefficients is not None:
        coefficients.append(m)
    return m


class GatedMLP(nn.Module):
    """`down_proj(act(gate_proj(h)) * up_proj(h))`: m is the coefficient vector, the columns of
    down_proj the value vectors (§3.1)."""

    def __init__(self, cfg):
        super().__init__()
        d, f, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)
        self.act = ACT[cfg.activation]

    def forward(self, h, mlp_mask=None, coefficients=None):
        m = self.act(self.gate_proj(h)) * self.up_proj(h)
        return self.down_proj(masked_coefficients(m, mlp_mask, coefficients))


class MLP(nn.Module):
    """`out(act(into(h)))` without a gate (GPT-J, GPT-NeoX, Falcon, MPT, GPT-2): m is the activation, the
    columns of the second matrix the value vectors. The two matrices carry the checkpoint's names."""

    def __init__(self, cfg, into: str, out: str, bias: bool = True):
        super().__init__()
        setattr(self, into, nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=bias))
        setattr(self, out, nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=bias))
        self.names, self.act = (into, out), ACT[cfg.activation]

    def forward(self, h, mlp_mask=None, coefficients=None):
        into, out = (getattr(self, name) for name in self.names)
        return out(masked_coefficients(self.act(into(h)), mlp_mask, coefficients))
