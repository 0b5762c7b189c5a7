"""The SpecWiki-style benchmark (§3.4): one JSON object per line, one line per concept.

    {"concept": ..., "tier": "high"|"medium"|"low", "category": ..., "popularity": optional,
     "mcq": [{"question": ..., "options": {"A": ..., "B": ..., "C": ..., "D": ...}, "answer": "A"}, ...],
     "open": [{"question": ..., "answer": ...}, ...]}   # open is optional

A bad file is rejected as a whole, naming the file, line and field at fault (spec/pss-method.md §1).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

TIERS = ("high", "medium", "low")
MIN_CONCEPTS = 6  # a concept needs 5 others for its unrelated set (§3.2)


class BenchmarkError(ValueError):
    pass


@dataclass
class MCQ:
    question: str
    options: dict[str, str]  # letter -> text, letters in order
    answer: str  # a key of options


@dataclass
class Concept:
    name: str
    tier: str
    category: str
    mcq: list[MCQ]
    open: list[dict] = field(default_factory=list)  # {"question", "answer"}
    popularity: float | None = None


def _require(raw, keys, where: str) -> None:
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{where}: must be a JSON object")
    for key in keys:
        if key not in raw:
            raise BenchmarkError(f"{where}: missing field {key!r}")


def _mcq(raw, where: str) -> MCQ:
    _require(raw, ("question", "options", "answer"), where)
    options = raw["options"]
    if not isinstance(options, dict) or len(options) < 4:
        raise BenchmarkError(f"{where}.options: needs at least 4 options, got "
                             f"{len(options) if isinstance(options, dict) else type(options).__name__}")
    if not all(isinstance(v, str) and v.strip() for v in options.values()):
        raise BenchmarkError(f"{where}.options: every option must be a non-empty string")
    if raw["answer"] not in options:
        raise BenchmarkError(f"{where}.answer: {raw['answer']!r} is not among the options {sorted(options)}")
    if not isinstance(raw["question"], str) or not raw["question"].strip():
        raise BenchmarkError(f"{where}.question: must be a non-empty string")
    return MCQ(raw["question"], dict(options), raw["answer"])


def load_benchmark(path) -> list[Concept]:
    """Parse and validate a benchmark file; raises BenchmarkError naming file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: benchmark file not found")
    concepts, seen = [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        at = f"{path}:{n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{at}: invalid JSON ({e.msg} at column {e.colno})") from None
        _require(raw, ("concept", "tier", "mcq"), at)
        name = raw["concept"]
        if name in seen:
            raise BenchmarkError(f"{at}: concept: duplicate name {name!r} (first on line {seen[name]})")
        seen[name] = n
        if raw["tier"] not in TIERS:
            raise BenchmarkError(f"{at}: tier: {raw['tier']!r} is not one of {', '.join(TIERS)}")
        if not isinstance(raw["mcq"], list) or not raw["mcq"]:
            raise BenchmarkError(f"{at}: mcq: needs a non-empty list of questions")
        mcq = [_mcq(q, f"{at}: mcq[{i}]") for i, q in enumerate(raw["mcq"])]
        opens = raw.get("open", [])
        if not isinstance(opens, list):
            raise BenchmarkError(f"{at}: open: must be a list")
        for i, q in enumerate(opens):
            if not isinstance(q, dict) or not q.get("question") or not q.get("answer"):
                raise BenchmarkError(f"{at}: open[{i}]: needs non-empty 'question' and 'answer'")
        concepts.append(Concept(name, raw["tier"], raw.get("category", ""), mcq, opens, raw.get("popularity")))
    if len(concepts) < MIN_CONCEPTS:
        raise BenchmarkError(f"{path}: {len(concepts)} concepts; PSS needs at least {MIN_CONCEPTS} "
                             "(each concept is compared with 5 others)")
    return concepts


def unrelated_sets(concepts: list[Concept], k: int = 5, seed: int = 0) -> list[list[int]]:
    """For each concept, the indices of k other concepts drawn uniformly without replacement with a
    seeded RNG: their MCQs form t*, the unrelated questions (§3.2, §4.1)."""
    rng = random.Random(seed)
    out = []
    for i in range(len(concepts)):
        others = [j for j in range(len(concepts)) if j != i]
        out.append(sorted(rng.sample(others, k)))
    return out
