"""The family registry: which file in `minipss/model/families/` serves a config.json's `model_type`.

Each family file declares a `FAMILY` (see `minipss.model.decoder.Family`): its model types, how its
config.json becomes a `ModelConfig` (whose `adds_bos` says whether the tokenizer prepends BOS), its model
class (modules named as the checkpoint's keys, the value matrix) and which checkpoint keys the loader may
skip. Adding an architecture is one new file and one entry in `REGISTERED` below.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..config import ModelConfig, check_config, check_raw_sizes
from ..decoder import Decoder, Family
from . import falcon, gemma, gpt2, gpt_neox, gptj, llama, mpt, olmo, olmo2

REGISTERED: tuple[Family, ...] = (
    llama.FAMILY,
    gemma.FAMILY,
    gptj.FAMILY,
    olmo.FAMILY,
    olmo2.FAMILY,
    gpt_neox.FAMILY,
    gpt2.FAMILY,
    falcon.FAMILY,
    mpt.FAMILY,
)

FAMILIES: dict[str, Family] = {t: family for family in REGISTERED for t in family.model_types}


def family_of(model_type) -> Family:
    """The family serving `model_type`; a ValueError listing the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def family_of_gguf(arch: str) -> Family:
    """The family that converts GGUF files of llama.cpp's `general.architecture` `arch`."""
    for family in REGISTERED:
        if arch in family.gguf_archs:
            return family
    known = sorted(a for family in REGISTERED for a in family.gguf_archs)
    raise ValueError(f"GGUF architecture {arch!r} is not supported (known: {', '.join(known)})")


def from_hf(cfg: dict) -> ModelConfig:
    """Normalise a Hugging Face config dict; ValueError on an unsupported model_type or a missing key."""
    family = family_of(cfg.get("model_type"))
    try:
        return family.parse_config(cfg)
    except KeyError as e:
        raise ValueError(f"missing key {e.args[0]!r} for model_type {cfg.get('model_type')!r}") from None
    except (TypeError, ZeroDivisionError) as e:  # a size of the wrong kind that the checks did not name
        raise ValueError(f"not a valid {cfg.get('model_type')} config ({e})") from None


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json in the model folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    check_raw_sizes(raw, path)
    try:
        cfg = from_hf(raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    check_config(cfg, path)
    return cfg


def value_matrix_slots(model: nn.Module, model_type: str) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of each block's value matrix, in a model whose modules carry the
    checkpoint's names: ours, or transformers' own (which is how the reference and the parity tests put a
    recording or masking wrapper at the input of transformers' value matrices, without hooks)."""
    ours = family_of(model_type).model
    slots = []
    for block in model.get_submodule(ours.blocks_path):
        parent, _, name = ours.value_matrix.rpartition(".")
        slots.append((block.get_submodule(parent) if parent else block, name))
    return slots


def build_model(cfg: ModelConfig) -> Decoder:
    """An uninitialised model of the config's family (on whatever device is current)."""
    return family_of(cfg.model_type).model(cfg)
