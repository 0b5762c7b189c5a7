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

from .config import ModelConfig, read_config
from .decoder import Decoder

IGNORED = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")
TEXT_PREFIXES = {"language_model.model.": "model.", "model.language_model.": "model.",
                 "language_model.lm_head.": "lm_head."}
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                   "model.multi_modal_projector.")
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def build_model(cfg: ModelConfig) -> Decoder:
    """An uninitialised model of the config's family (on whatever device is current)."""
    if cfg.family == "llama":
        from .models.llama import LlamaModel as cls
    elif cfg.family == "gemma":
        from .models.gemma import GemmaModel as cls
    else:
        from .models.gptj import GPTJModel as cls
    return cls(cfg)


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


def _rename(key: str) -> str | None:
    """The model's name for a checkpoint key, or None for keys that are not text-model weights."""
    if key.endswith(IGNORED) or key.startswith(VISION_PREFIXES):
        return None
    for prefix, new in TEXT_PREFIXES.items():
        if key.startswith(prefix):
            return new + key[len(prefix):]
    return key


def load_model(path, dtype=torch.float32, device="cpu") -> Decoder:
    """`minipss.load_model(path, dtype, device)`: the model in eval mode, gradients off."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    cfg = read_config(folder)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with torch.device("meta"):
        model = build_model(cfg)
    if cfg.tie_embeddings:
        model.tie_weights()
    expected = dict(model.state_dict())
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    state = {}
    for file in checkpoint_files(folder):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                name = _rename(key)
                if name is None:
                    continue
                if name == "lm_head.weight" and cfg.tie_embeddings:
                    continue  # some tied checkpoints store the copy as well
                if name not in expected:
                    raise ValueError(f"{file}: unexpected key {key!r} for a {cfg.model_type} model")
                tensor = f.get_tensor(key)
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
