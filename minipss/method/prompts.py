"""The prompt formats of the paper (Appendix B.1, C.1) and of our cloze mode (METHOD.md §3, §5)."""

from __future__ import annotations

import re
import string

from .benchmark import MCQ

FEW_SHOT = (
    "**Question:** What is the capital city of France? **Options:** A. Berlin B. Madrid C. Paris D. Rome "
    "**Answer:** C\n\n"
    "**Question:** What is the largest planet in our solar system? **Options:** A. Earth B. Jupiter C. Mars "
    "D. Venus **Answer:** B\n\n"
    "**Question:** Which element has the chemical symbol \"O\"? **Options:** A. Oxygen B. Gold C. Silver "
    "D. Iron **Answer:** A\n\n"
)

ANSWER_LETTER = re.compile(r"\b([ABCD])\b")


def options_text(q: MCQ) -> str:
    return " ".join(f"{letter}. {text}" for letter, text in q.options.items())


def mcq_prompt(q: MCQ) -> str:
    """The 3-shot lettered prompt (text completion, no chat template)."""
    return f"{FEW_SHOT}**Question:** {q.question} **Options:** {options_text(q)} **Answer:**"


def coefficient_prompt(q: MCQ) -> str:
    """Question and its correct answer, no few-shot: the text whose coefficients locate knowledge (§3.2)."""
    return f"Question: {q.question} Answer: {q.options[q.answer]}"


def cloze_context(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def open_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def letter_in(text: str) -> str | None:
    """The first standalone letter A-D in a generated continuation, or None (counts as wrong)."""
    found = ANSWER_LETTER.search(text)
    return found.group(1) if found else None


def letter_decided(text: str) -> bool:
    """True once more text can no longer change `letter_in(text)`: a standalone letter is followed by a
    character that is not a word character, and no undecoded bytes (U+FFFD) precede that point."""
    found = ANSWER_LETTER.search(text)
    if not found or found.end() >= len(text):
        return False
    return "\ufffd" not in text[: found.end() + 1] and not re.match(r"\w", text[found.end()])


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, collapsed spaces (SQuAD-style answer matching)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def open_correct(generation: str, gold: str) -> bool:
    """Correct when the normalised gold answer occurs in the normalised generation (§5, our stand-in for
    the paper's GPT-4o judge)."""
    g = normalise(gold)
    return bool(g) and g in normalise(generation)
