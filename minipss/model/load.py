"""Load a Hugging Face layout folder (config.json + safetensors) into a minipss decoder.

The model is built on the meta device and each tensor is read from safetensors straight into the target
dtype and device, so a bf16 model never holds a transient fp32 copy. Every key and shape is checked;
pickled checkpoints (`.bin`, `.pt`, ...) are refused: safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import ModelConfig
from .decoder import Decoder, Family
from .families import build_model, family_of, read_config

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
        files = [shard_file(folder, index, name) for name in sorted(set(_names(weight_map, index)))]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{index}: lists {f.name}, which is missing")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    pickled = [p.name for pattern in PICKLED for p in folder.glob(pattern)]
    if pickled:
        raise ValueError(f"{folder}: only pickled checkpoints found ({', '.join(pickled)}); minipss loads "
                         "safetensors only and never unpickles. Convert them to safetensors first.")
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _names(weight_map, index: Path) -> list[str]:
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: weight_map must map tensor names to file names")
    return list(weight_map.values())


def shard_file(folder: Path, index: Path, name: str) -> Path:
    """A file named by the shard index: a plain name inside the model folder, nothing else."""
    path = folder / name
    if Path(name).name != name or name in (".", "..") or path.resolve().parent != folder.resolve():
        raise ValueError(f"{index}: lists {name!r}, which is not a file inside the model folder")
    return path


def read_tensors(file: Path, wanted=lambda key: True):
    """(key, tensor) of a safetensors file for the keys `wanted` accepts; a truncated or damaged file,
    or a tensor with NaN or infinite values, is refused naming the file and the tensor."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                if not wanted(key):
                    continue
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and tensor.numel() and not all(
                        torch.isfinite(x) for x in torch.aminmax(tensor)):  # NaN propagates; far faster than isfinite
                    raise ValueError(f"{file}: tensor {key!r} holds NaN or infinite values")
                yield key, tensor
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{file}: not a readable safetensors file, truncated or damaged ({e})") from None


def check_memory(cfg: ModelConfig, dtype: torch.dtype, device, folder: Path) -> None:
    """Refuse, before allocating, a model whose parameters cannot fit in the target's memory."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    attn = d * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    params = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2) + L * (attn + 3 * d * f)
    need = params * torch.empty(0, dtype=dtype).element_size()
    device = torch.device(device)
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[1]
    else:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if need > available:
        raise ValueError(f"{folder / 'config.json'}: the config describes about {params / 1e9:.1f}B parameters "
                         f"({need / 2**30:.1f} GiB in {str(dtype).removeprefix('torch.')}), more than the "
                         f"{available / 2**30:.1f} GiB of memory on {device}")


def checkpoint_name(family: Family, key: str) -> str | None:
    """The model's name for a checkpoint key, or None for keys that are not text-model weights."""
    if key.endswith(family.ignored_keys) or key.startswith(family.skipped_prefixes):
        return None
    for prefix, new in family.renamed_prefixes.items():
        if key.startswith(prefix):
            return new + key[len(prefix):]
    return key


def is_transposed(family: Family, name: str) -> bool:
    return bool(family.transposed) and name.endswith(family.transposed)


def checkpoint_state(model: Decoder) -> dict[str, torch.Tensor]:
    """The model's weights as its checkpoint stores them (tied head left out, `[in, out]` layouts
    restored), ready for `safetensors.torch.save_file`."""
    family = family_of(model.config.model_type)
    state = {}
    for name, tensor in model.state_dict().items():
        if model.config.tie_embeddings and name == f"{model.head_path}.weight":
            continue
        tensor = tensor.detach()
        state[name] = (tensor.t() if is_transposed(family, name) else tensor).contiguous()
    return state


def load_model(path, dtype=torch.float32, device="cpu") -> Decoder:
    """`minipss.load_model(path, dtype, device)`: the model in eval mode, gradients off."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    cfg = read_config(folder)
    family = family_of(cfg.model_type)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    check_memory(cfg, dtype, device, folder)
    with torch.device("meta"):
        model = build_model(cfg)
    if cfg.tie_embeddings:
        model.tie_weights()
    expected = dict(model.state_dict())
    head = f"{model.head_path}.weight"
    if cfg.tie_embeddings:
        expected.pop(head, None)
    state = {}
    for file in checkpoint_files(folder):
        wanted = lambda key: checkpoint_name(family, key) not in (None, head if cfg.tie_embeddings else None)
        for key, tensor in read_tensors(file, wanted):  # not: ignored keys, a tied head's stored copy
            name = checkpoint_name(family, key)
            if name not in expected:
                raise ValueError(f"{file}: unexpected key {key!r} for a {cfg.model_type} model")
            if is_transposed(family, name):
                tensor = tensor.t().contiguous()
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(f"{file}: {key!r} has shape {tuple(tensor.shape)}, the config "
                                 f"implies {tuple(expected[name].shape)}")
            state[name] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{folder}: missing keys in the checkpoint: {shown}")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.tie_weights()
    model.eval().requires_grad_(False)
    return model
