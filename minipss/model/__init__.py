"""The model: config, shared layers, the decoder, families, loading, tokenizer, decoding."""
