"""The SpecWiki-style benchmark (§3.4): one JSON object per line, one line per concept.

    {"concept": ..., "tier": "high"|"medium"|"low", "category": ..., "popularity": optional,
     "mcq": [{"question": ..., "options": {"A": ..., "B": ..., "C": ..., "D": ...}, "answer": "A",
              "fact": optional, the fact it asks (questions of one fact share a split-half)}, ...],
     "open": [{"question": ..., "answer": ...}, ...]}   # open is optional

A bad file is rejected as a whole, naming the file, line and field at fault (METHOD.md §2).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

TIERS = ("high", "medium", "low")
LETTERS = ("A", "B", "C", "D")  # every scoring mode answers one of these four
MIN_CONCEPTS = 6  # a concept needs 5 others for its unrelated set (§3.2)


def benchmark_path(name: str = "minispecwiki") -> Path:
    """Path of a benchmark JSONL bundled with the package (`minipss/data/`)."""
    path = Path(__file__).parent.parent / "data" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no bundled benchmark named {name!r} ({path})")
    return path


class BenchmarkError(ValueError):
    pass


@dataclass
class MCQ:
    question: str
    options: dict[str, str]  # letter -> text, letters in order
    answer: str  # a key of options
    fact: str | None = None  # the fact it asks about: questions of one fact share a split-half (METHOD.md §4)


@dataclass
class Concept:
    name: str
    tier: str
    category: str
    mcq: list[MCQ]
    open: list[dict] = field(default_factory=list)  # {"question", "answer"}
    popularity: float | None = None
    line: int = 0  # where it is in the file, for messages


def _require(raw, keys, where: str) -> None:
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{where}: must be a JSON object")
    for key in keys:
        if key not in raw:
            raise BenchmarkError(f"{where}: missing field {key!r}")


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkError(f"{where}: must be a non-empty string, got {json.dumps(value)[:60]}")
    return value


def _mcq(raw, where: str) -> MCQ:
    _require(raw, ("question", "options", "answer"), where)
    options = raw["options"]
    if not isinstance(options, dict):
        raise BenchmarkError(f"{where}.options: must be an object {{\"A\": ..., \"B\": ..., \"C\": ..., "
                             f"\"D\": ...}}, got {type(options).__name__}")
    if len(options) < 4:
        raise BenchmarkError(f"{where}.options: needs at least 4 options, got {len(options)}")
    if tuple(options) != LETTERS:
        raise BenchmarkError(f"{where}.options: keys must be exactly A, B, C, D in that order (every scoring "
                             f"mode answers one of these four letters), got {', '.join(map(str, options))}")
    for letter, text in options.items():
        _text(text, f"{where}.options.{letter}")
    if not isinstance(raw["answer"], str) or raw["answer"] not in options:
        raise BenchmarkError(f"{where}.answer: {raw['answer']!r} is not among the options {sorted(options)}")
    _text(raw["question"], f"{where}.question")
    fact = raw.get("fact")
    if fact is not None and (isinstance(fact, bool) or not isinstance(fact, (str, int))):
        raise BenchmarkError(f"{where}.fact: must be a string or an integer naming the fact the question asks "
                             f"about, got {json.dumps(fact)[:60]}")
    return MCQ(raw["question"], dict(options), raw["answer"], None if fact is None else str(fact))


def _lines(path: Path):
    """(line number, text) of a UTF-8 file; a byte that is not UTF-8 is named with its line."""
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            yield n, raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise BenchmarkError(f"{path}:{n}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                 f"{e.start + 1}); save the file as UTF-8") from None


def load_benchmark(path) -> list[Concept]:
    """Parse and validate a benchmark file; raises BenchmarkError naming file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: benchmark file not found")
    concepts, seen = [], {}
    for n, line in _lines(path):
        if not line.strip():
            continue
        at = f"{path}:{n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{at}: invalid JSON ({e.msg} at column {e.colno})") from None
        _require(raw, ("concept", "tier", "mcq"), at)
        name = _text(raw["concept"], f"{at}: concept")
        if name in seen:
            raise BenchmarkError(f"{at}: concept: duplicate name {name!r} (first on line {seen[name]})")
        seen[name] = n
        if not isinstance(raw["tier"], str) or raw["tier"] not in TIERS:
            raise BenchmarkError(f"{at}: tier: {raw['tier']!r} is not one of {', '.join(TIERS)}")
        category = raw.get("category", "")
        if not isinstance(category, str):
            raise BenchmarkError(f"{at}: category: must be a string, got {json.dumps(category)[:60]}")
        popularity = raw.get("popularity")
        if popularity is not None and (isinstance(popularity, bool) or not isinstance(popularity, (int, float))
                                       or not math.isfinite(popularity)):
            raise BenchmarkError(f"{at}: popularity: must be a number or null, got {json.dumps(popularity)[:60]}")
        if not isinstance(raw["mcq"], list) or not raw["mcq"]:
            raise BenchmarkError(f"{at}: mcq: needs a non-empty list of questions")
        mcq = [_mcq(q, f"{at}: mcq[{i}]") for i, q in enumerate(raw["mcq"])]
        opens = raw.get("open", [])
        if not isinstance(opens, list):
            raise BenchmarkError(f"{at}: open: must be a list")
        for i, q in enumerate(opens):
            if not isinstance(q, dict) or not isinstance(q.get("question"), str) or not q["question"].strip() \
                    or not isinstance(q.get("answer"), str) or not q["answer"].strip():
                raise BenchmarkError(f"{at}: open[{i}]: needs non-empty string 'question' and 'answer'")
        concepts.append(Concept(name, raw["tier"], category, mcq, opens, popularity, n))
    if len(concepts) < MIN_CONCEPTS:
        raise BenchmarkError(f"{path}: {len(concepts)} concepts; PSS needs at least {MIN_CONCEPTS} "
                             "(each concept is compared with 5 others)")
    return concepts


UNRELATED_DRAWS = ("any", "same-category")


def unrelated_sets(concepts: list[Concept], k: int = 5, seed: int = 0, draw: str = "any") -> list[list[int]]:
    """For each concept, the indices of k other concepts drawn uniformly without replacement with a
    seeded RNG: their MCQs form t*, the unrelated questions (§3.2, §4.1). `draw="same-category"` draws
    them only from the concept's own category, so what the questions' kind shares (format, templates)
    cancels in |m - m*| and what is left is the concept's own (METHOD.md §2)."""
    if draw not in UNRELATED_DRAWS:
        raise ValueError(f"unrelated draw {draw!r}: choose one of {', '.join(UNRELATED_DRAWS)}")
    rng = random.Random(seed)
    out = []
    for i, c in enumerate(concepts):
        others = [j for j in range(len(concepts)) if j != i
                  and (draw == "any" or concepts[j].category == c.category)]
        if len(others) < k:
            raise ValueError(f"concept {c.name!r}: {len(others)} other concepts of category {c.category!r} in the "
                             f"benchmark, {k} needed for its unrelated set (--unrelated {draw})")
        out.append(sorted(rng.sample(others, k)))
    return out


def questions_of(concepts: list[Concept], i: int, others: list[int]):
    """t (concept i's MCQs) followed by t* (the MCQs of its unrelated concepts)."""
    return concepts[i].mcq + [q for j in others for q in concepts[j].mcq]
