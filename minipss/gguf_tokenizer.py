"""Gemma's tokenizer, rebuilt from GGUF metadata for the `tokenizers` library.

A GGUF file carries the vocabulary of a SentencePiece-style BPE tokenizer but no merges and no
tokenizer.json. What we rebuild, following spec/gemma3-gguf.md ("Tokenizer"):

- vocabulary: `tokenizer.ggml.tokens` in file order, tokens made only of spaces respelled with "▁";
- merges: every way to cut a token into two vocabulary tokens, ranked by the merged token's position
  in the vocabulary (Gemma's scores do not follow its merge order; its file order does);
- normalizer " " -> "▁" with no prefix, byte fallback on `<0x..>` tokens;
- control tokens as special added tokens, user-defined tokens (newline and tab runs, HTML tags) as
  plain added tokens, so neither is ever split;
- decoder "▁" -> " ", byte fallback, fuse; post-processor prepending `<bos>`.
"""

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
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
    if model != "llama":
        raise ValueError(f"{reader.data.filename}: tokenizer.ggml.model is {model!r}, expected 'llama' (SentencePiece)")
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

    add_bos = reader.get_field("tokenizer.ggml.add_bos_token")  # llama.cpp adds <bos> unless told not to
    if add_bos is None or add_bos.contents():
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])]
        )
    return tok


def build_tokenizer_json(reader) -> str:
    """The tokenizer.json text for the tokenizer in a GGUF file (see `build_tokenizer`)."""
    return build_tokenizer(reader).to_str()
