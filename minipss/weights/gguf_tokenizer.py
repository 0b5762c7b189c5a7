"""Tokenizers rebuilt from GGUF metadata for the `tokenizers` library.

A GGUF file carries a tokenizer as metadata (`tokenizer.ggml.*`) but no tokenizer.json. It names one
of two kinds in `tokenizer.ggml.model`:

`llama`: SentencePiece-style BPE (Gemma), with a vocabulary but no merges. We rebuild, from the
file's own vocabulary:
- vocabulary: `tokenizer.ggml.tokens` in file order, tokens made only of spaces respelled with "▁";
- merges: every way to cut a token into two vocabulary tokens, ranked by the merged token's position
  in the vocabulary (Gemma's scores do not follow its merge order; its file order does);
- normalizer " " -> "▁" with no prefix, byte fallback on `<0x..>` tokens;
- control tokens as special added tokens, user-defined tokens (newline and tab runs, HTML tags) as
  plain added tokens, so neither is ever split;
- decoder "▁" -> " ", byte fallback, fuse; post-processor prepending `<bos>`.

`gpt2`: byte-level BPE (SmolLM2, Qwen2.5), with its merges in `tokenizer.ggml.merges`. Text is first cut
into words by the regular expression that `tokenizer.ggml.pre` names (llama.cpp's pre-tokenizer types),
each word's UTF-8 bytes are spelled with GPT-2's byte alphabet, and the merges apply within a word.
No Unicode normalisation, as in llama.cpp. Control tokens are special added tokens, user-defined ones
plain added tokens.
"""

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

SPACE = "\u2581"  # "▁", SentencePiece's spelling of a space
NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6  # values of tokenizer.ggml.token_type


def metadata(reader, key: str):
    """The value of one GGUF metadata key; a clear error when the file lacks it."""
    field = reader.get_field(key)
    if field is None:
        raise ValueError(f"{reader.data.filename}: metadata key {key!r} is missing")
    return field.contents()


def respell(token: str) -> str:
    """A token made only of spaces is stored as real spaces; the normalized text spells them "▁"."""
    return SPACE * len(token) if token and not token.strip(" ") else token


def rebuild_merges(tokens: list[str]) -> list[tuple[str, str]]:
    """Every cut of a token into two vocabulary tokens, ranked by the merged token's position.

    Walking the vocabulary in order gives the ranking directly. Cuts of one token are listed with the
    longer left piece first (the tie-break transformers' own GGUF tokenizer uses).
    """
    known = set(tokens)
    merges = []
    for token in tokens:
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in known and right in known:
                merges.append((left, right))
    return merges


def build_tokenizer(reader) -> Tokenizer:
    """The tokenizer that a `gguf.GGUFReader` describes, as a `tokenizers.Tokenizer`."""
    model = metadata(reader, "tokenizer.ggml.model")
    if model == "gpt2":
        return build_byte_level(reader)
    if model != "llama":
        raise ValueError(
            f"{reader.data.filename}: tokenizer.ggml.model is {model!r}; known: 'llama' (SentencePiece), 'gpt2' (byte-level BPE)"
        )
    tokens = [respell(t) for t in metadata(reader, "tokenizer.ggml.tokens")]
    types = metadata(reader, "tokenizer.ggml.token_type")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"{reader.data.filename}: the vocabulary repeats a token")
    unk = tokens[metadata(reader, "tokenizer.ggml.unknown_token_id")]
    bos = tokens[metadata(reader, "tokenizer.ggml.bos_token_id")]

    vocab = {token: index for index, token in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=rebuild_merges(tokens), unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])

    # Control tokens are special (dropped by decode's skip_special_tokens); user-defined ones ("\n\n", "<div>")
    # are text. Runs of spaces are user-defined too, but once respelled they are reached through the merges.
    control = [t for t, kind in zip(tokens, types) if kind == CONTROL]
    user_defined = [t for t, kind in zip(tokens, types) if kind == USER_DEFINED and set(t) != {SPACE}]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError(f"{reader.data.filename}: added tokens did not all map onto the vocabulary")

    if adds_bos(reader):
        _prepend_bos(tok, bos, vocab[bos])
    return tok


def adds_bos(reader) -> bool:
    """`tokenizer.ggml.add_bos_token`; llama.cpp adds BOS to a SentencePiece vocabulary unless told not to."""
    field = reader.get_field("tokenizer.ggml.add_bos_token")
    if field is None:
        return metadata(reader, "tokenizer.ggml.model") == "llama"
    return bool(field.contents())


def _prepend_bos(tok: Tokenizer, bos: str, bos_id: int) -> None:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )


def byte_alphabet() -> dict[int, str]:
    """GPT-2's spelling of every byte as one printable character.

    Printable Latin-1 bytes spell themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen)
    become the characters from U+0100 on, in byte order. Byte-level vocabularies are written in it.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            spelling[byte] = chr(byte)
        else:
            spelling[byte] = chr(256 + extra)
            extra += 1
    return spelling


# llama.cpp's pre-tokenizer types (`tokenizer.ggml.pre`) -> the word splits, applied in order before the
# byte-level step. "smollm" is GPT-2's expression after isolating every digit; "qwen2" is Qwen2's own.
GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_WORDS = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
WORD_SPLITS = {"default": [GPT2_WORDS], "gpt2": [GPT2_WORDS], "smollm": [r"\p{N}", GPT2_WORDS], "qwen2": [QWEN2_WORDS]}


def build_byte_level(reader) -> Tokenizer:
    """Byte-level BPE from `tokenizer.ggml.tokens`, `.merges`, `.pre` and `.token_type`."""
    name = reader.data.filename
    pre = reader.get_field("tokenizer.ggml.pre")
    pre = pre.contents() if pre is not None else "default"
    if pre not in WORD_SPLITS:
        raise ValueError(f"{name}: tokenizer.ggml.pre {pre!r} is not a pre-tokenizer we know ({', '.join(WORD_SPLITS)})")
    alphabet = byte_alphabet()
    letters = set(alphabet.values())
    # every vocabulary entry should already be spelled in the byte alphabet; respell one that is not
    tokens = [t if set(t) <= letters else "".join(alphabet[b] for b in t.encode("utf-8"))
              for t in metadata(reader, "tokenizer.ggml.tokens")]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"{name}: the vocabulary repeats a token")
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = []
    for line, merge in enumerate(metadata(reader, "tokenizer.ggml.merges")):
        pair = tuple(merge.split(" "))
        if len(pair) != 2 or "".join(pair) not in vocab:
            raise ValueError(f"{name}: tokenizer.ggml.merges[{line}] = {merge!r} is not a merge of two tokens into one")
        merges.append(pair)

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    splits = [pre_tokenizers.Split(Regex(expr), behavior="isolated") for expr in WORD_SPLITS[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    types = metadata(reader, "tokenizer.ggml.token_type")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError(f"{name}: added tokens did not all map onto the vocabulary")
    if adds_bos(reader):
        bos = tokens[metadata(reader, "tokenizer.ggml.bos_token_id")]
        _prepend_bos(tok, bos, vocab[bos])
    return tok


def build_tokenizer_json(reader) -> str:
    """The tokenizer.json text for the tokenizer in a GGUF file (see `build_tokenizer`)."""
    return build_tokenizer(reader).to_str()
