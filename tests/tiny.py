"""Tiny random models (`minipss.model.tiny`: Hugging Face layout, a byte-level tokenizer) and a nonsense
benchmark in the real format: for testing the method without transformers or real weights."""

import json

from minipss.model.tiny import SPECIALS, byte_tokenizer, make_tiny_model, tiny_config  # noqa: F401  (the tests' own)


# GPT-J's config keys for the same small shape (it names its sizes differently)
GPTJ_SHAPE = dict(n_embd=32, n_head=4, n_layer=3, rotary_dim=4, n_positions=1024, vocab_size=259)


def make_bench(path, n_concepts=8, n_mcq=4, tiers=("high", "medium", "low"), categories=("Test",)):
    """A synthetic benchmark: real format, nonsense content (concept c in tier and category c modulo their
    counts)."""
    lines = []
    for c in range(n_concepts):
        mcq = []
        for q in range(n_mcq):
            opts = {L: f"{L.lower()}{c}{q} thing" for L in "ABCD"}
            mcq.append({"question": f"What is fact {q} of concept {c}?", "options": opts, "answer": "ABCD"[(c + q) % 4]})
        lines.append(json.dumps({"concept": f"Concept {c}", "tier": tiers[c % len(tiers)],
                                 "category": categories[c % len(categories)],
                                 "mcq": mcq, "open": [{"question": f"Name concept {c}?", "answer": f"c{c}"}]}))
    path.write_text("\n".join(lines) + "\n")
    return path
