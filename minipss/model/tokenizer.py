"""`minipss.load_tokenizer(path)`: `tokenizer.json` through the `tokenizers` package.

BOS is added by us, not by the file's post-processor, so every family behaves the same way: each family
file's config parsing says whether its tokenizer prepends BOS (`ModelConfig.adds_bos`); `add_bos_token` in
tokenizer_config.json wins.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from .families import read_config


class Tokenizer:
    def __init__(self, tokenizer: _HFTokenizer, bos_id: int | None, eos_ids: list[int], pad_id: int | None,
                 add_bos: bool):
        self.tok = tokenizer
        self.bos_id, self.eos_ids, self.add_bos = bos_id, eos_ids, add_bos and bos_id is not None
        self.pad_id = pad_id if pad_id is not None else (eos_ids[0] if eos_ids else 0)
        self.special_ids = {i for i in (bos_id, pad_id, *eos_ids) if i is not None}
        self.special_ids |= {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str, bos: bool | None = None) -> list[int]:
        """Token ids of `text`, with BOS first when the model expects it (or when `bos` says so)."""
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if (self.add_bos if bos is None else bos) else ids

    def decode(self, ids) -> str:
        """Text of `ids`, special tokens left out."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(path, config=None) -> Tokenizer:
    """The tokenizer of a model folder; `config` (a ModelConfig) stands in for the folder's config.json."""
    folder = Path(path)
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no tokenizer.json in the model folder")
    try:
        tok = _HFTokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers package raises a plain Exception on bad files
        raise ValueError(f"{file}: not a valid tokenizer.json ({e})") from None
    cfg = read_config(folder) if config is None else config
    add_bos = cfg.adds_bos
    extra = folder / "tokenizer_config.json"
    if extra.is_file():
        try:
            settings = json.loads(extra.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{extra}: invalid JSON ({e})") from None
        if not isinstance(settings, dict):
            raise ValueError(f"{extra}: must be a JSON object")
        add_bos = settings.get("add_bos_token", add_bos)
    return Tokenizer(tok, cfg.bos_token_id, cfg.eos_token_ids, cfg.pad_token_id, bool(add_bos))
