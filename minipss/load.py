"""Load a Hugging Face layout folder (config.json + safetensors) into a minipss decoder.

The model is built on the meta device and each tensor is read from safetensors straight into the target
dtype and device, so a bf16 model never holds a transient fp32 copy. Every key and shape is checked;
pickled checkpoints (`.bin`, `.pt`, ...) are refused: safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .decoder import Decoder, Family
from .models import build_model, family_of, read_config

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
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
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                name = checkpoint_name(family, key)
                if name is None:
                    continue
                if name == head and cfg.tie_embeddings:
                    continue  # some tied checkpoints store the copy as well
                if name not in expected:
                    raise ValueError(f"{file}: unexpected key {key!r} for a {cfg.model_type} model")
                tensor = f.get_tensor(key)
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
